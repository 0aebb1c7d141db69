"""Streamers against their coordinator, in process (no Ray, no Flight): the batches and
stats are the in-process service's, a PATCH lands at one window for every streamer, a
restarted streamer plans as before, rejects reach every streamer's next epoch."""

from __future__ import annotations

import pytest

from packer.contract.cursor import Cursor, TicketError
from packer.contract.schema import from_record_batch
from packer.image.reject import Reject
from packer.plan.epoch import plan_epoch
from packer.plan.history import ConfigHistory
from service.batch_source import ServedElsewhere
from service.job import ServiceJob
from service.job.streamer_registry import streamer_of
from service.settings import ServiceSettings
from service.state import StateStore
from service.streamers import wire
from tests.service.service_testkit import SMALL_CONFIG, InProcessFill, valid_image_ids
from tests.service.streamers.streamer_testkit import (
    DirectClient,
    LocalStreamer,
    coordinated_job,
    without_cache,
)

WORLD = 4


def _wire(batches) -> list[bytes]:
    """What the transport sends of each batch: its Arrow IPC message and app_metadata."""
    return [b.record_batch.serialize().to_pybytes() + b.metadata.to_bytes() for b in batches]


def _read(streams, rank: int, world: int, epoch: int, start: int = 0, limit: int | None = None):
    stream = streams.open(Cursor(rank, world, epoch, start))
    batches = []
    for batch in stream:
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break
    stream.close()
    return batches


def test_streamers_send_the_batches_and_stats_the_service_sends_in_process(sample_index):
    alone = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), fill=InProcessFill())
    expected = {r: _wire(_read(alone.rank_streams, r, WORLD, 0)) for r in range(WORLD)}

    job, coordinator = coordinated_job(sample_index, streamers=2)
    streamers = [LocalStreamer.start(coordinator, i) for i in range(2)]
    got = {r: _wire(_read(streamers[streamer_of(r, 2)].streams, r, WORLD, 0)) for r in range(WORLD)}
    for streamer in streamers:
        streamer.stop()  # sends what is queued

    assert got == expected
    assert job.stats.packing() == alone.stats.packing()
    assert job.stats.packing()["images_packed"] == len(valid_image_ids(sample_index))

    def cursors(j: ServiceJob) -> list[tuple]:
        return [(r["rank"], r["next_batch"], r["batches_sent"]) for r in j.rank_positions()]

    assert cursors(job) == cursors(alone)
    assert job.recent_sequences() and len(job.recent_sequences()) <= len(alone.recent_sequences())
    rows = {row["streamer"]: row for row in job.streamers.rows()}
    assert rows[0]["ranks"] == [0, 2] and rows[1]["ranks"] == [1, 3]
    assert sum(r["images"] for r in rows.values()) == job.stats.packing()["images_packed"]


def test_a_patch_lands_at_the_same_window_for_every_streamer(sample_index):
    job, coordinator = coordinated_job(sample_index, streamers=2)
    first, second = (LocalStreamer.start(coordinator, i) for i in range(2))
    # Streamer 0 plans the start of epoch 0 for rank 0; then the config changes.
    early = _read(first.streams, 0, 2, 0, limit=1)
    entry, changed = job.update_config({"batch_size": 2, "max_images_per_seq": 3})
    assert changed and entry.version == 2
    assert (entry.epoch, entry.window) == job.config_control.change_point()
    batches = {
        (0, 0): early + _read(first.streams, 0, 2, 0, start=1),
        (1, 0): _read(second.streams, 1, 2, 0),
        (0, 1): _read(first.streams, 0, 2, 1),
        (1, 1): _read(second.streams, 1, 2, 1),
    }
    # One shared planner with the final history plans what both streamers sent.
    final = ConfigHistory(list(job.history.entries))
    for epoch in (0, 1):
        planner = plan_epoch(sample_index, final, epoch).planner
        for rank in (0, 1):
            sent = batches[(rank, epoch)]
            planned = list(planner.iter_rank_plans(rank, 2))
            assert [b.metadata.config_version for b in sent] == [p.config_version for p in planned]
            assert [from_record_batch(b.record_batch).image_ids for b in sent] == [
                p.image_ids for p in planned
            ]
    versions = {
        rank: {b.metadata.config_version for e in (0, 1) for b in batches[(rank, e)]}
        for rank in (0, 1)
    }
    assert versions == {0: {1, 2}, 1: {1, 2}}  # both streamers crossed the change
    first.stop()
    second.stop()


def test_a_restarted_streamer_plans_every_window_as_before(sample_index, tmp_path):
    job, coordinator = coordinated_job(sample_index, streamers=2, state=StateStore(tmp_path))
    before = LocalStreamer.start(coordinator, 0)
    head = _read(before.streams, 0, 2, 0, limit=2)
    job.update_config({"batch_size": 2})
    whole = _wire(head + _read(before.streams, 0, 2, 0, start=2))
    before.stop()  # killed and restarted: a new process, nothing kept but the coordinator
    after = LocalStreamer.start(coordinator, 0)
    assert _wire(_read(after.streams, 0, 2, 0)) == whole
    after.stop()
    # The coordinator's frontier is persisted: a config change starts past it.
    assert StateStore(tmp_path).frontier()[0] == job.config_control.change_point()[1]


def _image_ids(batches) -> list[str]:
    return [i for b in batches for i in from_record_batch(b.record_batch).image_ids]


def test_rejects_a_streamer_finds_leave_the_next_epoch_of_every_streamer(sample_index):
    index = without_cache(sample_index)
    job, coordinator = coordinated_job(index, streamers=2)
    first, second = (LocalStreamer.start(coordinator, i) for i in range(2))
    epoch0 = _image_ids(_read(first.streams, 0, 2, 0))
    broken = epoch0[0]
    # Found by streamer 0's fill while epoch 0 is planned: it applies from epoch 1.
    first.planners.record_rejects([Reject(broken, "truncated", "found at fill")])
    first.reporter.flush()
    epoch0 += _image_ids(_read(second.streams, 1, 2, 0))
    epoch1 = _image_ids(_read(first.streams, 0, 2, 1)) + _image_ids(_read(second.streams, 1, 2, 1))
    assert sorted(epoch0) == valid_image_ids(index)  # planned before: it keeps its plan
    assert broken not in epoch1 and len(epoch1) == len(epoch0) - 1
    assert [r.image_id for r in job.config_control.planners.rejected_before_planning(1)] == [broken]
    first.stop()
    second.stop()


def test_an_epoch_far_past_the_frontier_is_refused_through_the_coordinator(sample_index):
    job, coordinator = coordinated_job(sample_index, streamers=1)
    streamer = LocalStreamer.start(coordinator, 0)
    _read(streamer.streams, 0, 1, 0, limit=1)
    with pytest.raises(TicketError) as caught:
        streamer.streams.open(Cursor(0, 1, epoch=5))
    assert caught.value.field == "epoch"
    streamer.streams.open(Cursor(0, 1, epoch=1)).close()  # the next epoch is fine
    streamer.stop()


def test_only_the_jobs_streamers_may_call_the_coordinator(sample_index):
    job, coordinator = coordinated_job(sample_index, streamers=2)
    with pytest.raises(wire.WireError, match="streamer key"):
        DirectClient(coordinator, 0, key="a trainer's guess").reserve(0, 0)
    with pytest.raises(wire.WireError, match="streamer"):
        DirectClient(coordinator, 2).reserve(0, 0)  # the job has streamers 0 and 1
    assert job.config_control.planners.furthest_epoch() == -1  # nothing was reserved


def test_the_coordinator_streams_nothing_itself(sample_index):
    from service.batch_source import StreamerUnavailable

    job, _ = coordinated_job(sample_index, streamers=2)

    with pytest.raises(ServedElsewhere, match="get_flight_info"):
        job.open_rank_stream(Cursor(0, 2))
    with pytest.raises(StreamerUnavailable, match="streamer 1"):
        job.locate(Cursor(3, 4))  # no streamer has registered yet
    job.streamers.registered(1, "grpc+tcp://127.0.0.1:9", "127.0.0.1", 42)
    assert job.locate(Cursor(3, 4)) == ["grpc+tcp://127.0.0.1:9"]
    assert ServiceJob(sample_index, SMALL_CONFIG, StateStore(None)).locate(Cursor(3, 4)) == []
    assert ServiceSettings().streamers == 0  # the in-process path stays the default


def test_a_trainers_report_to_its_streamer_reaches_the_coordinator(sample_index):
    from service.streamers.streamer import StreamerSource, StreamerSpec

    job, coordinator = coordinated_job(sample_index, streamers=2)
    streamer = LocalStreamer.start(coordinator, 1)
    spec = StreamerSpec(
        streamer=1, count=2, coordinator="grpc+tcp://127.0.0.1:1", key="k", patch_size=16,
        seq_len=128, class_names=[],
    )  # fmt: skip
    source = StreamerSource(spec, streamer.streams, streamer.reporter, config_version=1)
    source.report_trainer(3, {"step": 7, "step_time_s": 0.5, "data_wait_s": 0.2})
    streamer.reporter.flush()
    (report,) = job.trainers()
    assert (report["rank"], report["step"], report["starved"]) == (3, 7, True)
    assert source.locate(Cursor(3, 4)) == []  # its own rank: do_get here
    with pytest.raises(ServedElsewhere, match="rank 2 is served by streamer 0"):
        source.open_rank_stream(Cursor(2, 4))
    streamer.stop()
