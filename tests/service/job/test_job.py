"""ServiceJob (service/job/job.py): the held-out validation split never reaches a stream."""

from __future__ import annotations

from packer.contract.cursor import Cursor
from packer.contract.schema import from_record_batch
from packer.plan.split import split_index
from service.api.routers.stats import stats_response
from service.job import ServiceJob
from service.settings import ServiceSettings
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG, InProcessFill, valid_image_ids

HOLDOUT = 0.25


def _job(index, fraction: float = HOLDOUT, seed: int = 0) -> ServiceJob:
    settings = ServiceSettings(holdout_fraction=fraction, holdout_seed=seed)
    return ServiceJob(
        index, SMALL_CONFIG, StateStore(None), settings=settings, fill=InProcessFill()
    )


def test_no_held_out_image_appears_in_any_rank_stream_of_any_epoch(sample_index):
    train, val = split_index(sample_index, HOLDOUT, seed=0)
    held_out = set(val.column("image_id").to_pylist())
    assert held_out  # the sample data set is large enough to hold some out
    job = _job(sample_index)
    world = 2
    for epoch in range(2):
        streamed: list[str] = []
        for rank in range(world):
            for batch in job.open_rank_stream(Cursor(rank, world, epoch=epoch)):
                streamed += from_record_batch(batch.record_batch).image_ids
        assert not held_out & set(streamed)
        # Everything else still streams, once per epoch.
        assert sorted(streamed) == valid_image_ids(train)


def test_stats_count_the_held_out_images_apart(sample_index):
    job = _job(sample_index, seed=4)
    _, val = split_index(sample_index, HOLDOUT, seed=4)
    stats = stats_response(job, now=0.0).model_dump()
    assert stats["holdout"] == {"fraction": HOLDOUT, "seed": 4, "held_out_images": val.num_rows}
    assert stats["images"] == sample_index.num_rows - val.num_rows
    no_holdout = stats_response(_job(sample_index, fraction=0.0), now=0.0).model_dump()
    assert no_holdout["holdout"]["held_out_images"] == 0
    assert no_holdout["images"] == sample_index.num_rows
