"""POST /simulate: what a proposed config would give, without touching the running job."""

from __future__ import annotations

import threading

from fastapi import APIRouter, HTTPException

from packer.config import ConfigError
from service.api.deps import Authorized, JobDep, config_error_422
from service.api.schemas import (
    BAD_BODY,
    UNAUTHORIZED,
    ErrorResponse,
    SimulateRequest,
    SimulateResponse,
    patch_values,
)

router = APIRouter(tags=["simulate"])

# Simulation is CPU work next to the packing job: one at a time, the rest get a 429.
_one_at_a_time = threading.Semaphore(1)


@router.post(
    "/simulate",
    response_model=SimulateResponse,
    dependencies=[Authorized],
    responses={
        **BAD_BODY,
        **UNAUTHORIZED,
        429: {"model": ErrorResponse, "description": "another simulation is running"},
    },
)
def post_simulate(request: SimulateRequest, job: JobDep) -> dict:
    """Plan a sample of this dataset's images with the current config plus `config`
    overrides (any field, patch_size and seq_len included) and return the predicted
    packing stats next to the current config's on the same sample."""
    if not _one_at_a_time.acquire(timeout=30):
        raise HTTPException(429, "another simulation is running; retry shortly")
    try:
        return job.simulate(patch_values(request.config), request.sample_size, request.epochs)
    except ConfigError as e:
        where = ("body",) if e.field in ("sample_size", "epochs") else ("body", "config")
        raise config_error_422(e, *where) from None
    finally:
        _one_at_a_time.release()
