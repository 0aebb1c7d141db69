"""Trainer reports: each rank says how long its steps take and how long it waited for data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import Authorized, JobDep
from service.api.schemas import (
    BAD_BODY,
    UNAUTHORIZED,
    TrainerOut,
    TrainerReport,
    TrainersResponse,
)

router = APIRouter(tags=["trainers"])


@router.post(
    "/trainers/{rank}/report",
    response_model=TrainerOut,
    dependencies=[Authorized],
    responses={**BAD_BODY, **UNAUTHORIZED},
)
def post_report(
    rank: Annotated[int, Path(ge=0, le=65535)], report: TrainerReport, job: JobDep
) -> dict:
    """Record rank's latest step; /stats shows it with its data-wait fraction."""
    entry = job.report_trainer(rank, report.model_dump())
    return {**entry, "age_s": 0.0}


@router.get("/trainers", response_model=TrainersResponse)
async def get_trainers(job: JobDep) -> dict:
    return {"trainers": job.trainers()}
