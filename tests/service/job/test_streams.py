"""Rank streams in-process (no Ray): striding, order, cursors, bounded fills, endings."""

from __future__ import annotations

import pytest

from packer.contract.cursor import Cursor, TicketError
from packer.contract.rank_layout import batches_per_rank, global_batch_index
from packer.contract.schema import from_record_batch
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from service.job import ServiceJob, ServiceStopping
from service.job.rank_cursors import RankStatus, rank_rows
from service.settings import ServiceSettings
from service.state import CursorRecord, StateStore
from tests.service.service_testkit import SMALL_CONFIG, InProcessFill


def _job(index, max_in_flight: int = 4, state: StateStore | None = None):
    fill = InProcessFill()
    job = ServiceJob(
        index,
        SMALL_CONFIG,
        state or StateStore(None),
        settings=ServiceSettings(max_in_flight=max_in_flight),
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
            plan = planner.plan(j)
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


def test_the_stored_cursor_follows_a_stalled_stream_batch_by_batch(sample_index, tmp_path):
    job, _ = _job(sample_index, state=StateStore(tmp_path))
    stream = job.open_rank_stream(Cursor(0, 1, epoch=0))
    for k in range(1, 7):
        assert next(stream).metadata.batch == k - 1
        # The consumer stalls after k batches: the generator is parked at batch k - 1,
        # batches 0..k-2 have left. A store opened beside the running job, as after a
        # kill -9, already shows that, not a position from up to a second ago.
        fresh = StateStore(tmp_path)
        assert [r.cursor for r in fresh.cursors()] == [Cursor(0, 1, 0, k - 1)]
        fresh.close()
    stream.close()


def test_a_world_size_above_the_service_limit_is_a_ticket_error(sample_index):
    job = ServiceJob(
        sample_index, SMALL_CONFIG, StateStore(None), settings=ServiceSettings(max_world_size=4)
    )
    with pytest.raises(TicketError) as caught:
        job.open_rank_stream(Cursor(0, 5, epoch=0))
    assert caught.value.field == "world_size"
    assert "at most 4" in str(caught.value) and "max_world_size" in str(caught.value)
    assert job.streams() == [] and job.rank_positions() == []
    job.open_rank_stream(Cursor(3, 4, epoch=0)).close()
    assert len(job.rank_positions()) == 1


def test_per_rank_state_keeps_only_the_latest_world_size(sample_index, tmp_path):
    job, _ = _job(sample_index, state=StateStore(tmp_path))
    for world in range(1, 41):
        for rank in {0, world - 1}:
            stream = job.open_rank_stream(Cursor(rank, world, epoch=0))
            next(stream)
            stream.close()
    rows = job.rank_positions()
    assert {(r["rank"], r["world_size"]) for r in rows} == {(0, 40), (39, 40)}
    fresh = StateStore(tmp_path)
    assert sorted(r.cursor.rank for r in fresh.cursors()) == [0, 39]
    assert {r.cursor.world_size for r in fresh.cursors()} == {40}
    fresh.close()
    # A stream of the old world size still open keeps streaming, untracked.
    old = job.open_rank_stream(Cursor(1, 2, epoch=0))
    newer = job.open_rank_stream(Cursor(0, 3, epoch=0))
    next(old)
    next(newer)
    next(old)
    assert [(r["rank"], r["world_size"]) for r in job.rank_positions()] == [(0, 3)]
    old.close()
    newer.close()
    job.state.close()
    # A restart keeps the world size that moved last.
    restarted, _ = _job(sample_index, state=StateStore(tmp_path))
    assert [(r["rank"], r["world_size"]) for r in restarted.rank_positions()] == [(0, 3)]


def test_a_restart_prunes_stored_ranks_of_older_world_sizes(sample_index, tmp_path):
    store = StateStore(tmp_path)
    store.save_cursors(
        [CursorRecord(Cursor(r, w, 0, 1), float(w)) for w in (2, 8, 4) for r in range(w)]
    )
    store.close()
    job, _ = _job(sample_index, state=StateStore(tmp_path))
    assert {r["world_size"] for r in job.rank_positions()} == {8}
    assert len(job.rank_positions()) == 8
    job.state.close()
    fresh = StateStore(tmp_path)
    assert {r.cursor.world_size for r in fresh.cursors()} == {8}
    fresh.close()


def _wire_bytes(batches) -> list[bytes]:
    """What the transport sends of each batch: its Arrow IPC message and app_metadata."""
    return [b.record_batch.serialize().to_pybytes() + b.metadata.to_bytes() for b in batches]


def test_a_replayed_epoch_is_byte_identical_after_a_later_config_change(sample_index):
    job, _ = _job(sample_index)
    num_batches = EpochPlanner(sample_index, ConfigHistory.start(SMALL_CONFIG), 0).num_batches()
    world = 4
    assert num_batches % world, "the epoch must end part-way through a round (padding)"
    first = {r: _wire_bytes(job.open_rank_stream(Cursor(r, world, 0))) for r in range(world)}
    padding = [
        b
        for r in range(world)
        for b in job.open_rank_stream(Cursor(r, world, 0))
        if b.metadata.global_batch >= num_batches
    ]
    assert padding and all(b.metadata.config_version == 1 for b in padding)

    # Epoch 0 is planned to its end; this change (more rows per batch) starts after it.
    entry, changed = job.update_config({"batch_size": 2, "max_images_per_seq": 3})
    assert changed and entry.version == 2
    replayed = {r: _wire_bytes(job.open_rank_stream(Cursor(r, world, 0))) for r in range(world)}
    assert replayed == first
    epoch1 = list(job.open_rank_stream(Cursor(0, world, 1)))
    assert {b.metadata.config_version for b in epoch1} == {2}
    assert all(b.record_batch.num_rows == 2 for b in epoch1)


def test_rank_rows_show_lag_behind_the_furthest_rank_of_the_same_world():
    ranks = [
        (RankStatus(Cursor(0, 2, 0, 5), updated_at=90.0, batches_sent=5, open_streams=1), 2),
        (RankStatus(Cursor(1, 2, 0, 3), updated_at=95.0, batches_sent=3), 0),
        (RankStatus(Cursor(0, 1, 1, 0), updated_at=99.0), 0),
    ]
    rows = {(r["rank"], r["world_size"]): r for r in rank_rows(ranks, now=100.0)}
    assert rows[(0, 2)]["lag_batches"] == 0 and rows[(0, 2)]["connected"] is True
    assert rows[(1, 2)]["lag_batches"] == 2 and rows[(1, 2)]["connected"] is False
    assert rows[(0, 2)]["in_flight"] == 2 and rows[(1, 2)]["idle_s"] == 5.0
    assert rows[(0, 1)]["lag_epochs"] == 0  # a world of its own leads itself


def test_a_rank_an_epoch_behind_lags_by_epochs_not_batches():
    ranks = [
        (RankStatus(Cursor(0, 2, 1, 1), updated_at=0.0), 0),
        (RankStatus(Cursor(1, 2, 0, 9), updated_at=0.0), 0),
    ]
    behind = rank_rows(ranks, now=0.0)[1]
    assert (behind["lag_epochs"], behind["lag_batches"]) == (1, None)
