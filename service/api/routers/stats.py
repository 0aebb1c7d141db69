"""GET /stats: packing efficiency, throughput, histograms, rejects, rank cursors, trainers.

The shape of /stats is `StatsResponse` (service/api/schemas.py), built here from the
job's parts and nowhere else: the Prometheus collector reads the same object.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import JobDep
from service.api.schemas import (
    HoldoutOut,
    PackingStatsOut,
    RankOut,
    StatsResponse,
    StreamerOut,
    StreamsOut,
    ThroughputOut,
    TimelineResponse,
    TrainerOut,
    VersionStatsOut,
)
from service.job import ServiceJob

router = APIRouter(tags=["stats"])


def stats_response(job: ServiceJob, now: float | None = None) -> StatsResponse:
    """Everything GET /stats shows, at `now` (default: the current time)."""
    now = time.time() if now is None else now
    packing = PackingStatsOut.model_validate(job.stats.packing())
    configs = {e.version: e for e in list(job.history.entries)}
    active, max_seen = job.open_counts()
    streamers = job.streamers.rows(now) if job.streamers is not None else []
    trainers = [TrainerOut.model_validate(t) for t in job.trainers(now)]
    return StatsResponse(
        dataset=job.dataset,
        uptime_s=round(now - job.started_at, 3),
        config_version=job.config_version.version,
        images=job.num_images,
        valid_images=job.num_valid_images,
        classes=job.classes.classes,
        images_per_class=job.classes.images_per_class,
        holdout=HoldoutOut(
            fraction=job.settings.holdout_fraction,
            seed=job.settings.holdout_seed,
            held_out_images=job.held_out_images,
        ),
        packing_efficiency=packing.packing_efficiency,
        delivered_efficiency=packing.delivered_efficiency,
        packing=packing,
        throughput=ThroughputOut.model_validate(job.stats.throughput(now)),
        by_config_version=[
            VersionStatsOut(
                config_version=version,
                from_epoch=configs[version].epoch if version in configs else None,
                from_window=configs[version].window if version in configs else None,
                stats=PackingStatsOut.model_validate(stats),
            )
            for version, stats in job.stats.by_version().items()
        ],
        rejected_by_reason=packing.rejected_by_reason,
        notes=packing.notes,
        skipped_by_extension=packing.skipped_by_extension,
        config_warning=job.config_control.warning,
        class_warnings=job.classes.warnings,
        ranks=[RankOut.model_validate(row) for row in job.rank_positions(now)],
        streams=StreamsOut(
            active=active, max_in_flight=job.settings.max_in_flight, max_in_flight_seen=max_seen
        ),
        streamers=[StreamerOut.model_validate(row) for row in streamers],
        coordinator_bytes_sent=job.flight_sent.total,
        trainers=trainers,
        trainers_starved=sum(1 for t in trainers if t.starved),
    )


@router.get("/stats", response_model=StatsResponse)
async def get_stats(job: JobDep) -> StatsResponse:
    """Efficiency (real / all tokens) over the run, the last minute and per config
    version; images/s, tokens/s, sequences/s; histograms of images per sequence and
    tokens per image; rejected images by reason; each rank's cursor and lag; each
    streamer's node, ranks, images/s, bytes/s and restarts; trainer reports (are they
    waiting for data?)."""
    return stats_response(job)


@router.get("/stats/timeline", response_model=TimelineResponse)
async def get_timeline(
    job: JobDep, limit: Annotated[int, Query(ge=1, le=900)] = 300
) -> TimelineResponse:
    """Delivery rates per second, oldest first: the dashboard's charts."""
    return TimelineResponse(bucket_s=job.stats.bucket_s, points=job.stats.timeline(limit))
