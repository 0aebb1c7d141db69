"""Rank streams in-process (no Ray): striding, order, cursors, bounded fills, endings."""

from __future__ import annotations

import pytest

from packer.contract.cursor import Cursor, TicketError, batches_per_rank, global_batch_index
from packer.contract.schema import from_record_batch
from packer.plan import ConfigHistory, EpochPlanner
from service.job import JobOptions, ServiceJob, ServiceStopping
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG, InProcessFill


def _job(index, max_in_flight: int = 4, state: StateStore | None = None):
    fill = InProcessFill()
    job = ServiceJob(
        index,
        SMALL_CONFIG,
        state or StateStore(None),
        options=JobOptions(max_in_flight=max_in_flight),
        fill=fill,
    )
    return job, fill


def test_a_rank_stream_delivers_its_global_batches_k_times_w_plus_r_in_order(sample_index):
    job, _ = _job(sample_index)
    planner = EpochPlanner(sample_index, ConfigHistory.start(SMALL_CONFIG), 0)
    num_batches = planner.num_batches()
    world = 3
    seen: list[str] = []
    for rank in range(world):
        batches = list(job.open_rank_stream(Cursor(rank, world, epoch=0)))
        assert len(batches) == batches_per_rank(num_batches, world)
        for k, batch in enumerate(batches):
            j = global_batch_index(rank, world, k)
            assert (batch.metadata.epoch, batch.metadata.rank) == (0, rank)
            assert batch.metadata.batch == k
            assert batch.metadata.global_batch == j
            assert batch.metadata.config_version == 1
            plan = planner.batch(j)
            ids = list(from_record_batch(batch.record_batch).image_ids)
            # The planner's batch j, or all padding where the epoch ran out mid-round.
            assert ids == (plan.image_ids if plan is not None else [])
            seen += ids
    assert len(seen) == len(set(seen)) == job.num_valid_images


def test_a_stream_resumes_at_its_cursor(sample_index):
    job, _ = _job(sample_index)
    whole = list(job.open_rank_stream(Cursor(1, 2, epoch=0)))
    resumed = list(job.open_rank_stream(Cursor(1, 2, epoch=0, next_batch=2)))
    assert [b.metadata for b in resumed] == [b.metadata for b in whole[2:]]
    assert [b.record_batch for b in resumed] == [b.record_batch for b in whole[2:]]


def test_the_cursor_advances_as_batches_are_taken(sample_index, tmp_path):
    job, _ = _job(sample_index, state=StateStore(tmp_path))
    stream = job.open_rank_stream(Cursor(0, 2, epoch=0, next_batch=1))
    (status,) = job.streams()

    def rank_row() -> dict:
        (row,) = [r for r in job.rank_positions() if (r["rank"], r["world_size"]) == (0, 2)]
        return row

    assert rank_row()["next_batch"] == 1 and rank_row()["connected"] is True
    first = next(stream)
    assert first.metadata.batch == 1
    # Batch 1 has left only when the transport asks for the next one.
    assert status.cursor == Cursor(0, 2, 0, 1)
    second = next(stream)
    assert second.metadata.batch == 2
    assert status.cursor == Cursor(0, 2, 0, 2) == Cursor(0, 2).after(first.metadata)
    assert (rank_row()["next_batch"], rank_row()["batches_sent"]) == (2, 1)

    stream.close()  # the trainer went away
    assert status.end == "closed" and status.closed_at is not None
    assert rank_row()["connected"] is False
    # Closing saves the cursor: a reopened store shows where rank 0 of 2 stands.
    job.state.close()
    reopened = StateStore(tmp_path)
    assert [r.cursor for r in reopened.cursors()] == [Cursor(0, 2, 0, 2)]
    reopened.close()


def test_a_stalled_consumer_bounds_in_flight_fills(sample_index):
    job, fill = _job(sample_index, max_in_flight=2)
    stream = job.open_rank_stream(Cursor(0, 1, epoch=0))
    (status,) = job.streams()
    next(stream)
    # The consumer stops here: one batch taken, at most two fills pending behind it, and
    # the rest of the epoch not even planned.
    assert fill.seen_max_in_flight == [2]
    assert status.submitted == fill.plans_taken <= status.received + 2 == 3
    assert status.in_flight <= 2
    num_batches = EpochPlanner(sample_index, ConfigHistory.start(SMALL_CONFIG), 0).num_batches()
    assert fill.plans_taken < num_batches
    for _ in range(2):
        next(stream)
        assert status.in_flight <= 2
    assert status.max_in_flight_seen <= 2
    assert status.submitted == fill.plans_taken == status.received + status.in_flight
    assert fill.plans_taken <= 3 + 2 < num_batches
    stream.close()


def test_a_finished_stream_is_complete_and_counted_once_in_the_stats(sample_index):
    job, _ = _job(sample_index)
    batches = list(job.open_rank_stream(Cursor(0, 1, epoch=0)))
    (status,) = job.streams()
    assert status.end == "complete"
    assert status.sent == len(batches) == status.received
    packed = job.stats.packing()["images_packed"]
    list(job.open_rank_stream(Cursor(0, 1, epoch=0)))  # sent again after a reconnect
    assert job.stats.packing()["images_packed"] == packed == job.num_valid_images


def test_a_stopping_job_refuses_new_streams_and_ends_open_ones(sample_index):
    job, _ = _job(sample_index)
    stream = job.open_rank_stream(Cursor(0, 1, epoch=0))
    next(stream)
    job.stop()
    with pytest.raises(ServiceStopping):
        next(stream)
    (status,) = job.streams()
    assert status.end.startswith("error: ") and status.closed_at is not None
    with pytest.raises(ServiceStopping):
        job.open_rank_stream(Cursor(0, 1, epoch=0))


def test_an_epoch_far_beyond_the_planned_ones_is_a_ticket_error(sample_index):
    job, _ = _job(sample_index)
    next(job.open_rank_stream(Cursor(0, 1, epoch=0)))
    with pytest.raises(TicketError) as caught:
        job.open_rank_stream(Cursor(0, 1, epoch=2))
    assert caught.value.field == "epoch"
    assert [s.cursor.epoch for s in job.streams()] == [0]  # the refused one opened nothing
