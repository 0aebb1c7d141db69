"""GET /stats: packing efficiency, throughput, histograms, rejects, rank cursors, trainers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import JobDep
from service.api.schemas import StatsResponse, TimelineResponse

router = APIRouter(tags=["stats"])


@router.get("/stats", response_model=StatsResponse)
async def get_stats(job: JobDep) -> dict:
    """Efficiency (real / all tokens) over the run, the last minute and per config
    version; images/s, tokens/s, sequences/s; histograms of images per sequence and
    tokens per image; rejected images by reason; each rank's cursor and lag; trainer
    reports (are they waiting for data?)."""
    return job.summary()


@router.get("/stats/timeline", response_model=TimelineResponse)
async def get_timeline(
    job: JobDep, limit: Annotated[int, Query(ge=1, le=900)] = 300
) -> TimelineResponse:
    """Delivery rates per second, oldest first: the dashboard's charts."""
    return TimelineResponse(bucket_s=job.stats.bucket_s, points=job.stats.timeline(limit))
