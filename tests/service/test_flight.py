"""The Flight stream end to end: exactly once across ranks, resume, restart, backpressure."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pyarrow.flight as flight
import pytest

from packer.contract.schema import PackedBatch, packed_schema, to_record_batch
from service.fixed_batches import FixedBatchSource
from service.flight import PackedFlightServer
from service.state import StateStore
from tests.service.service_testkit import (
    SMALL_CONFIG,
    connect,
    image_ids,
    read_stream,
    received,
    ticket,
    valid_image_ids,
)

pytestmark = pytest.mark.slow


def _wait_until(condition, timeout: float = 30.0) -> None:
    """Poll `condition` (a wait for the server to settle, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_two_ranks_get_disjoint_equal_streams_covering_the_epoch(start, sample_index):
    service = start()
    rank0 = read_stream(service.flight_location, 0, 2, epoch=0)
    rank1 = read_stream(service.flight_location, 1, 2, epoch=0)

    assert len(rank0) == len(rank1) > 1
    ids0, ids1 = image_ids(rank0), image_ids(rank1)
    assert not set(ids0) & set(ids1)
    assert sorted(ids0 + ids1) == valid_image_ids(sample_index)
    for rank, batches in ((0, rank0), (1, rank1)):
        for k, batch in enumerate(batches):
            assert batch.metadata["batch"] == k
            assert batch.metadata["global_batch"] == k * 2 + rank
            assert batch.metadata["rank"] == rank
            assert batch.metadata["epoch"] == 0
            assert batch.metadata["config_version"] == 1
            assert batch.schema_metadata["patch_size"] == "16"
            assert batch.schema_metadata["seq_len"] == "128"
            assert max(batch.images_per_seq) <= SMALL_CONFIG.max_images_per_seq

    stats = httpx.get(f"{service.api_url}/stats").json()
    assert stats["packing"]["images_packed"] == len(valid_image_ids(sample_index))
    assert 0 < stats["delivered_efficiency"] <= stats["packing_efficiency"] <= 1
    cursors = {(r["rank"], r["world_size"]): r for r in stats["ranks"]}
    assert cursors[(0, 2)]["next_batch"] == len(rank0)
    assert cursors[(1, 2)]["lag_batches"] == 0


def test_same_batches_whoever_asks_first(start):
    """The shared planner gives rank 1 the same batches whether or not rank 0 went first."""
    first = start()
    alone = read_stream(first.flight_location, 1, 2, epoch=0)
    first.stop()
    second = start()
    read_stream(second.flight_location, 0, 2, epoch=0)
    after = read_stream(second.flight_location, 1, 2, epoch=0)
    assert [b.image_ids for b in alone] == [b.image_ids for b in after]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "ticket"),
        (b"\xff\xfe", "ticket"),
        (b"[1, 2]", "ticket"),
        (b'{"rank": 0, "epoch": 0}', "world_size"),
        (b'{"rank": 2, "world_size": 2, "epoch": 0}', "rank"),
        (b'{"rank": -1, "world_size": 2, "epoch": 0}', "rank"),
        (b'{"rank": 0, "world_size": 0, "epoch": 0}', "world_size"),
        (b'{"rank": 0, "world_size": 1, "epoch": "0"}', "epoch"),
        (b'{"rank": 0, "world_size": 1, "epoch": 0, "start_batch": 1.5}', "start_batch"),
        (b'{"rank": 0, "world_size": 1, "epoch": 0, "colour": 1}', "colour"),
        (b'{"rank": 0, "world_size": 1, "epoch": 99}', "epoch"),
        (b'{"rank": 0, "world_size": 1, "epoch": 1' + b"0" * 400 + b"}", "epoch"),
        (b'{"rank": 0, "world_size": 1, "epoch": 0, "start_batch": 1e999}', "start_batch"),
        (b'{"rank": 0, "world_size": 2000, "epoch": 0}', "world_size"),  # max_world_size
    ],
)
def test_bad_tickets_get_a_reason_and_the_server_keeps_serving(start, raw, field):
    service = start()
    # Plan epoch 0 first, so that epoch 99 is "too far ahead".
    read_stream(service.flight_location, 0, 1, epoch=0, limit=1)
    client = connect(service.flight_location)
    with pytest.raises(flight.FlightServerError, match=f"bad ticket: {field}"):
        client.do_get(flight.Ticket(raw)).read_all()
    client.close()
    assert len(read_stream(service.flight_location, 0, 1, epoch=0, limit=1)) == 1


def test_flight_listing_describes_the_stream(start):
    service = start()
    client = connect(service.flight_location)
    infos = list(client.list_flights())
    assert len(infos) == 1
    info = infos[0]
    assert info.schema.equals(packed_schema(16, 128))
    description = json.loads(info.endpoints[0].ticket.ticket)
    assert description == {"rank": 0, "world_size": 1, "epoch": 0, "start_batch": 0}
    about = json.loads(info.app_metadata)
    assert (about["patch_size"], about["seq_len"], about["config_version"]) == (16, 128, 1)

    one_rank = flight.FlightDescriptor.for_command(ticket(1, 2, 0).ticket)
    assert json.loads(client.get_flight_info(one_rank).endpoints[0].ticket.ticket)["rank"] == 1
    with pytest.raises(flight.FlightServerError, match="unknown flight"):
        client.get_flight_info(flight.FlightDescriptor.for_path("nope"))
    client.close()


def test_reconnect_and_service_restart_keep_exactly_once(start, sample_index, tmp_path):
    state_dir = tmp_path / "state"
    first = start(state_dir=state_dir)
    rank0 = read_stream(first.flight_location, 0, 2, epoch=0, limit=2)
    # Rank 0 drops and reconnects with its cursor: nothing lost, nothing repeated.
    rank0 += read_stream(first.flight_location, 0, 2, epoch=0, start_batch=2, limit=1)
    rank1 = read_stream(first.flight_location, 1, 2, epoch=0, limit=1)
    # A config change mid-epoch is part of the history a restart must reproduce.
    patched = httpx.patch(f"{first.api_url}/config", json={"max_images_per_seq": 3})
    assert patched.status_code == 200, patched.text
    version = patched.json()["version"]
    first.stop()

    second = start(state_dir=state_dir)
    assert httpx.get(f"{second.api_url}/config").json()["version"] == version
    rank0 += read_stream(second.flight_location, 0, 2, epoch=0, start_batch=len(rank0))
    rank1 += read_stream(second.flight_location, 1, 2, epoch=0, start_batch=len(rank1))

    assert [b.metadata["batch"] for b in rank0] == list(range(len(rank0)))
    assert [b.metadata["batch"] for b in rank1] == list(range(len(rank1)))
    assert len(rank0) == len(rank1)
    delivered = image_ids(rank0) + image_ids(rank1)
    assert sorted(delivered) == valid_image_ids(sample_index)
    for batch in rank0 + rank1:
        if batch.metadata["config_version"] == version:
            assert max(batch.images_per_seq, default=0) <= 3


def test_a_stalled_rank_keeps_its_fill_bounded_and_others_finish(start, sample_index):
    # One image per 1024-token sequence: each batch is ~0.8 MB, so a rank's epoch
    # (~24 batches) is more than gRPC's flow-control window and socket buffers hold.
    config = SMALL_CONFIG.replace(seq_len=1024, max_images_per_seq=1)
    service = start(config=config, max_in_flight=2)
    per_rank = len(valid_image_ids(sample_index)) // 2
    client = connect(service.flight_location)
    stalled = client.do_get(ticket(0, 2, 0))
    first = received(stalled.read_chunk())  # one batch, then it stops reading
    assert first.metadata["batch"] == 0

    rank1 = read_stream(service.flight_location, 1, 2, epoch=0)
    assert len(rank1) == per_rank  # the other rank is not held up by the stalled one

    (stream,) = [s for s in service.job.streams() if s.cursor.rank == 0]
    assert stream.closed_at is None  # still open, parked behind the stalled client
    assert stream.sent < per_rank
    assert stream.max_in_flight_seen <= 2
    assert stream.in_flight <= 2
    stalled.cancel()
    client.close()
    _wait_until(lambda: all(s.closed_at for s in service.job.streams()))
    assert stream.end == "closed"


def test_backpressure_parks_a_stalled_stream_at_the_transport():
    """Replay 300 large batches: a client that stops reading after one holds the server
    to what gRPC flow control buffers (a few batches), while another client reads all."""
    rng = np.random.default_rng(0)
    batch = PackedBatch.empty(2, 1024, 16)
    batch.patches[:] = rng.integers(0, 256, batch.patches.shape, dtype=np.uint8)
    record_batch = to_record_batch(batch)  # about 1.6 MB
    source = FixedBatchSource([record_batch], batches_per_epoch=300)
    server = PackedFlightServer(source, "127.0.0.1", 0)
    location = f"grpc+tcp://127.0.0.1:{server.port}"
    try:
        client = connect(location)
        stalled = client.do_get(ticket(0, 2, 0))
        stalled.read_chunk()
        done = threading.Event()
        other: list = []

        def read_other() -> None:
            other.extend(read_stream(location, 1, 2, epoch=0))
            done.set()

        threading.Thread(target=read_other, daemon=True).start()
        _wait_until(done.is_set, timeout=120)
        assert len(other) == 150

        # Let the stalled stream's producer run as far as it can, then check it stopped.
        seen: list[int] = []

        def settled() -> bool:
            seen.append(source.produced[(0, 2)])
            return len(seen) > 10 and len(set(seen[-10:])) == 1

        _wait_until(settled)
        produced = source.produced[(0, 2)]
        assert produced < 150
        assert produced * record_batch.nbytes < 64 * 2**20
        stalled.cancel()
        client.close()
    finally:
        server.shutdown()


def test_corrupt_images_are_counted_as_rejected_never_lost(start, tmp_path, index_cache_dir):
    from packer.sample_data import write_sample_dataset

    folder = tmp_path / "images"
    write_sample_dataset(folder, 16, seed=5)
    good = next((folder / "circles").glob("*.jpg")).read_bytes()
    (folder / "circles" / "garbage.jpg").write_bytes(b"this is not an image at all")
    (folder / "circles" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    service = start(dataset=str(folder))
    index = service.job.index

    rank0 = read_stream(service.flight_location, 0, 2, epoch=0)
    rank1 = read_stream(service.flight_location, 1, 2, epoch=0)
    delivered = image_ids(rank0) + image_ids(rank1)
    assert len(delivered) == len(set(delivered))
    assert "circles/garbage.jpg" not in delivered
    assert "circles/truncated.jpg" not in delivered

    stats = httpx.get(f"{service.api_url}/stats").json()
    rejected = stats["packing"]["rejected_by_reason"]
    assert sum(rejected.values()) == 2, rejected
    assert len(delivered) + 2 == index.num_rows == 18
    assert stats["rejected_by_reason"] == rejected


def _one_line_reason(call) -> str:
    """The message of the Flight error `call()` raises; it must be one line, with no
    Python traceback and no server path."""
    with pytest.raises(flight.FlightError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message, message
    assert "Traceback" not in message and "/work/" not in message, message
    assert ".py" not in message, message
    return message


def test_every_client_caused_failure_is_a_one_line_flight_error():
    source = FixedBatchSource([to_record_batch(PackedBatch.empty(1, 128, 16))], batches_per_epoch=4)
    server = PackedFlightServer(source, "127.0.0.1", 0)
    client = connect(f"grpc+tcp://127.0.0.1:{server.port}")
    anywhere = flight.FlightDescriptor.for_path("anything")
    record_batch = source.batches[0]
    try:
        deep = b"[" * 100_000
        digits = b'{"rank": 0, "world_size": 1, "epoch": ' + b"7" * 5000 + b"}"
        many = b'{"rank": 0, "world_size": 1, "epoch": ' + b"7" * 900 + b"}"
        for raw in (deep, digits, many, b"[" * 1000 + b"]" * 1000):
            reason = _one_line_reason(lambda raw=raw: client.do_get(flight.Ticket(raw)).read_all())
            assert "bad ticket" in reason
            command = flight.FlightDescriptor.for_command(raw)
            assert "bad ticket" in _one_line_reason(lambda c=command: client.get_flight_info(c))

        def put() -> None:
            writer, _ = client.do_put(anywhere, record_batch.schema)
            writer.write_batch(record_batch)
            writer.close()

        def exchange() -> None:
            writer, reader = client.do_exchange(anywhere)
            writer.begin(record_batch.schema)
            writer.write_batch(record_batch)
            writer.done_writing()
            reader.read_all()

        for call in (
            put,
            exchange,
            lambda: list(client.do_action(flight.Action("drop", b"everything"))),
            lambda: list(client.do_action(flight.Action("x" * 5000, b"\xff" * 5000))),
        ):
            assert "not supported" in _one_line_reason(call)
        assert [action.type for action in client.list_actions()] == ["navit.report"]
        for body in (
            b"{",
            b'{"rank": 0}',
            b'{"rank": 0, "step": -1, "step_time_s": 1, "data_wait_s": 0}',
            b'{"step": 1, "x": 2}',
        ):
            action = flight.Action("navit.report", body)
            assert "bad report" in _one_line_reason(lambda a=action: list(client.do_action(a)))
        assert source.reports == {}
        for descriptor in (anywhere, flight.FlightDescriptor.for_command(deep)):
            assert client.get_schema(descriptor).schema.equals(record_batch.schema)
        # The server still serves.
        assert client.do_get(ticket(0, 1, 0)).read_all().num_rows == 4
    finally:
        client.close()
        server.shutdown()


def _wire(location: str, rank: int, world_size: int, epoch: int) -> list[bytes]:
    """A rank's epoch as the wire carries it: each batch's Arrow IPC message + app_metadata."""
    client = connect(location)
    try:
        reader = client.do_get(ticket(rank, world_size, epoch))
        out = []
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return out
            out.append(chunk.data.serialize().to_pybytes() + chunk.app_metadata.to_pybytes())
    finally:
        client.close()


def test_a_replayed_epoch_is_byte_identical_after_a_patch(start):
    service = start()
    world = 5  # 48 images in about ten batches: the last round is part padding
    first = [_wire(service.flight_location, r, world, 0) for r in range(world)]
    patched = httpx.patch(f"{service.api_url}/config", json={"batch_size": 2})
    assert patched.status_code == 200, patched.text
    replayed = [_wire(service.flight_location, r, world, 0) for r in range(world)]
    assert replayed == first
    assert any(b'"config_version": 1}' in batch for rank in first for batch in rank)


def test_the_state_store_follows_a_stalled_stream(start, tmp_path):
    """After k batches the trainer stops reading; the store (read as after a kill -9)
    catches up with the stream's position instead of lagging behind it."""
    state_dir = tmp_path / "state"
    config = SMALL_CONFIG.replace(seq_len=1024, max_images_per_seq=1)  # ~0.8 MB batches
    service = start(config=config, state_dir=state_dir, max_in_flight=2)
    client = connect(service.flight_location)
    reader = client.do_get(ticket(0, 1, 0))
    k = 3
    for _ in range(k):
        reader.read_chunk()

    def stored() -> int | None:
        fresh = StateStore(state_dir)
        try:
            return {r.cursor.rank: r.cursor.next_batch for r in fresh.cursors()}.get(0)
        finally:
            fresh.close()

    def in_memory() -> int:
        (status,) = [s for s in service.job.streams() if s.closed_at is None]
        return status.cursor.next_batch

    # The server sends what gRPC buffers beyond the k read, then parks; the store shows
    # exactly where it parked (batches handed to the transport), at least k - 1.
    seen: list[tuple[int, int | None]] = []

    def settled() -> bool:
        seen.append((in_memory(), stored()))
        return len(seen) > 10 and len(set(seen[-10:])) == 1 and seen[-1][0] == seen[-1][1]

    _wait_until(settled)
    assert seen[-1][1] >= k - 1
    reader.cancel()
    client.close()


def test_get_schema_and_every_do_get_name_the_data_sets_classes(start):
    from packer.contract.classes import schema_class_names

    service = start()
    names = ["checkers", "circles", "squares", "stripes"]  # the sample's class folders
    client = connect(service.flight_location)
    try:
        descriptor = flight.FlightDescriptor.for_command(
            b'{"rank": 0, "world_size": 1, "epoch": 0}'
        )
        assert schema_class_names(client.get_schema(descriptor).schema) == names
        reader = client.do_get(ticket(0, 2, 0))
        assert schema_class_names(reader.schema) == names
        reader.cancel()
    finally:
        client.close()
    stats = httpx.get(f"{service.api_url}/stats").json()
    assert stats["classes"] == names and sum(stats["images_per_class"].values()) > 0


def test_a_trainer_reports_its_steps_over_flight_and_the_dashboard_shows_them(start):
    from packer.contract.report import StepReport

    service = start()
    client = connect(service.flight_location)
    report = StepReport(rank=1, step=7, step_time_s=0.5, data_wait_s=0.2, world_size=2)
    try:
        (result,) = client.do_action(flight.Action("navit.report", report.to_bytes()))
        assert result.body.to_pybytes() == b"ok"
    finally:
        client.close()
    (shown,) = httpx.get(f"{service.api_url}/stats").json()["trainers"]
    assert (shown["rank"], shown["step"], shown["data_wait_fraction"]) == (1, 7, 0.4)
    assert shown["starved"] is True
