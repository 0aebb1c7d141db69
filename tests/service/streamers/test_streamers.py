"""Streamers on the session's Ray, end to end over Flight: discovery, exactly once over
the ranks, the in-process service's bytes, a kill -9 survived, a PATCH at one window,
a streamer that cannot start."""

from __future__ import annotations

import os
import signal
import socket
import time

import httpx
import pyarrow.flight as flight
import pytest

from packer.contract.cursor import Cursor
from packer.contract.schema import from_record_batch
from packer.plan.epoch import plan_epoch
from packer.plan.history import ConfigHistory, ConfigVersion
from service.flight import bearer_call_options
from service.streamers.pool import StreamerStartError
from tests.service.service_testkit import (
    connect,
    image_ids,
    read_endpoint_stream,
    read_stream,
    self_signed,
    ticket,
    valid_image_ids,
)

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


def _stats_when(api_url: str, condition, verify=True, timeout: float = 60.0) -> dict:
    """/stats once `condition(stats)` holds: streamers send their events asynchronously
    (a wait for them to arrive, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{api_url}/stats", verify=verify).json()
        if condition(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"/stats never got there: {stats['streamers']}")
        time.sleep(0.1)


def test_four_ranks_over_two_streamers_get_every_image_once_with_token_and_tls(
    start, sample_index, tmp_path
):
    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
    root = cert.read_bytes()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    service = start(streamers=2, tls_cert=cert, tls_key=key, token_file=token_file)

    locations, seen, counts = {}, [], set()
    for rank in range(4):
        location, batches = read_endpoint_stream(
            service.flight_location, rank, 4, 0, token=TOKEN, tls_root=root
        )
        locations[rank] = location
        counts.add(len(batches))
        for k, batch in enumerate(batches):
            assert (batch.metadata["rank"], batch.metadata["batch"]) == (rank, k)
        seen += image_ids(batches)
    assert sorted(seen) == valid_image_ids(sample_index)  # every image, exactly once
    assert len(counts) == 1  # every rank the same number of batches
    # Rank r from streamer r % 2, each on its node's address, over TLS.
    assert locations[0] == locations[2] != locations[1] == locations[3]
    assert all(loc.startswith("grpc+tls://127.0.0.1:") for loc in locations.values())

    options = bearer_call_options(TOKEN)
    coordinator = connect(service.flight_location, root)
    with pytest.raises(flight.FlightServerError, match="get_flight_info") as refused:
        coordinator.do_get(ticket(0, 4, 0), options).read_all()
    assert "\n" not in str(refused.value).split("gRPC client debug context")[0].strip()
    streamer = connect(locations[0], root)
    with pytest.raises(flight.FlightServerError, match="served by streamer 1"):
        streamer.do_get(ticket(1, 4, 0), options).read_all()
    with pytest.raises(flight.FlightUnauthenticatedError):
        streamer.do_get(ticket(0, 4, 0)).read_all()  # the same token on every streamer
    coordinator.close()
    streamer.close()

    stats = _stats_when(
        service.api_url,
        lambda s: s["packing"]["images_packed"] == len(seen),
        verify=str(cert),
    )
    rows = stats["streamers"]
    assert [r["ranks"] for r in rows] == [[0, 2], [1, 3]]
    assert {(r["node"], r["state"], r["restarts"]) for r in rows} == {("127.0.0.1", "up", 0)}
    assert sum(r["images"] for r in rows) == len(seen)
    assert [r["next_batch"] for r in stats["ranks"]] == [len(batches)] * 4
    # The coordinator answered discovery only: a small share of what the ranks received.
    assert stats["coordinator_bytes_sent"] < stats["throughput"]["run"]["bytes"]
    metrics = httpx.get(f"{service.api_url}/metrics", verify=str(cert)).text
    assert 'navit_streamer_up{node="127.0.0.1",streamer="1"} 1.0' in metrics
    assert 'navit_streamer_restarts_total{node="127.0.0.1",streamer="0"} 0.0' in metrics


def test_streamers_send_the_bytes_the_in_process_service_sends(start):
    alone = start()
    expected = {r: [b.wire for b in read_stream(alone.flight_location, r, 3, 0)] for r in range(3)}
    alone.stop()
    service = start(streamers=2)
    got = {
        r: [b.wire for b in read_endpoint_stream(service.flight_location, r, 3, 0)[1]]
        for r in range(3)
    }
    assert got == expected


def _arrays(batch) -> tuple:
    return (
        batch.patches.tobytes(),
        batch.segment_ids.tobytes(),
        batch.patch_rows.tobytes(),
        batch.patch_cols.tobytes(),
        list(batch.image_ids),
        batch.labels.tobytes(),
    )


def test_a_streamer_killed_mid_epoch_restarts_and_its_rank_resumes_at_its_cursor(
    start, sample_index, monkeypatch
):
    from trainer.data import FlightRoute, iter_batches

    opened = []
    route_open = FlightRoute.open
    monkeypatch.setattr(
        FlightRoute, "open", lambda self, c: opened.append(c) or route_open(self, c)
    )
    # One fill at a time, so the stream is still being filled when its streamer dies.
    service = start(streamers=2, max_in_flight=1)
    victim = service.streamers.pids()[0]
    got = []
    for cursor, batch in iter_batches(
        service.flight_location, Cursor(0, 2), end_epoch=1, prefetch=0
    ):
        got.append((cursor, batch))
        if len(got) == 1:
            os.kill(victim, signal.SIGKILL)  # the process of the actor serving rank 0
    other = read_endpoint_stream(service.flight_location, 1, 2, 0)[1]

    assert len(opened) >= 2, "the trainer should have asked again after the kill"
    assert [c.next_batch for c, _ in got] == list(range(1, len(got) + 1))
    ids = [i for _, batch in got for i in batch.image_ids] + image_ids(other)
    assert sorted(ids) == valid_image_ids(sample_index)  # nothing lost, nothing repeated
    assert service.streamers.pids()[0] != victim
    stats = _stats_when(service.api_url, lambda s: s["streamers"][0]["restarts"] == 1)
    assert stats["streamers"][0]["state"] == "up"

    # A replay of the epoch from the restarted streamer sends the same bytes.
    client = connect(read_endpoint_stream(service.flight_location, 0, 2, 0, limit=1)[0])
    replay = [from_record_batch(chunk.data) for chunk in client.do_get(ticket(0, 2, 0))]
    client.close()
    assert [_arrays(b) for b in replay] == [_arrays(b) for _, b in got]


def test_a_patch_takes_effect_at_the_same_window_on_every_streamer(start, sample_index):
    service = start(streamers=2)
    # Streamer 0 plans the start of epoch 0; then the config changes.
    read_endpoint_stream(service.flight_location, 0, 2, 0, limit=1)
    patch = httpx.patch(
        f"{service.api_url}/config", json={"batch_size": 2, "max_images_per_seq": 3}
    ).json()
    assert patch["version"] == 2
    sent = {
        (rank, epoch): read_endpoint_stream(service.flight_location, rank, 2, epoch)[1]
        for epoch in (0, 1)
        for rank in (0, 1)
    }
    history = ConfigHistory(
        [
            ConfigVersion.from_dict(e)
            for e in httpx.get(f"{service.api_url}/config").json()["history"]
        ]
    )
    assert (history.latest.epoch, history.latest.window) == tuple(patch["effective_from"].values())
    for (rank, epoch), batches in sent.items():
        planned = list(plan_epoch(sample_index, history, epoch).planner.iter_rank_plans(rank, 2))
        assert [b.metadata["config_version"] for b in batches] == [
            p.config_version for p in planned
        ]
        assert [b.image_ids for b in batches] == [p.image_ids for p in planned]
    for rank in (0, 1):
        versions = {b.metadata["config_version"] for e in (0, 1) for b in sent[(rank, e)]}
        assert versions == {1, 2}, (rank, versions)  # each streamer crossed the change


def test_a_streamer_that_cannot_start_stops_the_service_start_with_one_line(start):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StreamerStartError) as caught:
            start(streamers=1, streamer_port=port)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("streamer 0 cannot start on 127.0.0.1: OSError:")
    assert f"127.0.0.1:{port}" in message and "port is taken" in message
