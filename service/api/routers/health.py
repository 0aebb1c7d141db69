"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process serves HTTP."""
    return HealthResponse(status="ok")


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "not ready yet"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready once the index is loaded and Ray is up: then streams can start."""
    index_loaded = request.app.state.job is not None
    ray_up = _ray_up()
    reasons = []
    if not index_loaded:
        reasons.append("the index is loading")
    if not ray_up:
        reasons.append("Ray is not initialised")
    body = ReadyResponse(ready=not reasons, index_loaded=index_loaded, ray=ray_up, reasons=reasons)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
