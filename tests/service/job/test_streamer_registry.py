"""StreamerRegistry: rank r belongs to streamer r % N, registrations count restarts, a
streamer not up yet or down for good is a clear error, not a location."""

from __future__ import annotations

import pytest

from packer.contract.cursor import Cursor
from service.batch_source import StreamerFailed, StreamerUnavailable
from service.job.streamer_registry import StreamerRegistry, streamer_of


def test_rank_r_belongs_to_streamer_r_mod_n_whatever_the_world_size():
    assert [streamer_of(r, 2) for r in range(6)] == [0, 1, 0, 1, 0, 1]
    assert [streamer_of(r, 3) for r in range(4)] == [0, 1, 2, 0]


def test_the_location_registered_last_is_the_one_answered_and_restarts_are_counted():
    registry = StreamerRegistry(2)
    with pytest.raises(StreamerUnavailable, match="streamer 1 .*not started"):
        registry.locate(Cursor(1, 4))
    assert registry.registered(1, "grpc+tcp://10.0.0.2:4000", "10.0.0.2", 7, now=10.0) == 0
    assert registry.locate(Cursor(3, 4)) == ["grpc+tcp://10.0.0.2:4000"]
    # Ray restarted it: a new process, a new port.
    assert registry.registered(1, "grpc+tcp://10.0.0.2:4100", "10.0.0.2", 9, now=20.0) == 1
    assert registry.locate(Cursor(1, 4)) == ["grpc+tcp://10.0.0.2:4100"]
    registry.opened(1, Cursor(1, 4))
    registry.opened(1, Cursor(3, 4))
    rows = registry.rows(now=21.0)
    assert rows[1] | {"seen_s_ago": None} == {
        "streamer": 1,
        "state": "up",
        "node": "10.0.0.2",
        "location": "grpc+tcp://10.0.0.2:4100",
        "pid": 9,
        "world_size": 4,
        "ranks": [1, 3],
        "restarts": 1,
        "failure": None,
        "batches": 0,
        "images": 0,
        "bytes": 0,
        "images_per_s": 0.0,
        "bytes_per_s": 0.0,
        "seen_s_ago": None,
    }
    assert (rows[0]["state"], registry.rows(now=30.0)[1]["state"]) == ("starting", "silent")


def test_a_streamer_down_for_good_answers_its_reason():
    registry = StreamerRegistry(1)
    registry.registered(0, "grpc+tcp://127.0.0.1:4000", "127.0.0.1", 7)
    registry.failed(0, "Ray gave up restarting it")
    with pytest.raises(StreamerFailed, match="streamer 0 .*rank 2.*gave up"):
        registry.locate(Cursor(2, 3))
    assert registry.rows()[0]["state"] == "failed"
