"""EventReporter: events reach the coordinator in order, a refused call raises, and a
coordinator that was away gets everything once it answers again."""

from __future__ import annotations

import threading

import pytest

from packer.contract.cursor import TicketError
from service.streamers.reporter import EventReporter


class Coordinator:
    """Takes event batches; refuses check_epoch of epoch 9; can be made unreachable."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.calls = 0
        self.away = threading.Event()

    def __call__(self, events: list[dict]) -> dict:
        self.calls += 1
        if self.away.is_set():
            raise ConnectionError("the coordinator is restarting")
        errors = {}
        for position, event in enumerate(events):
            if event.get("kind") == "check_epoch" and event["epoch"] == 9:
                errors[str(position)] = ["epoch", "epoch 9 is too far ahead"]
            self.received.append(event)
        return {"config_version": 3, "furthest_epoch": 1, "errors": errors}


def test_events_arrive_in_order_and_a_refused_call_raises():
    coordinator = Coordinator()
    reporter = EventReporter(coordinator, heartbeat_s=0.01)
    for n in range(200):
        reporter.post({"kind": "advanced", "n": n})
    reporter.call({"kind": "check_epoch", "epoch": 1})  # the 200 before it arrived first
    assert [e.get("n") for e in coordinator.received] == [*range(200), None]
    with pytest.raises(TicketError) as caught:
        reporter.call({"kind": "check_epoch", "epoch": 9})
    assert caught.value.field == "epoch"
    assert (reporter.config_version, reporter.furthest_epoch) == (3, 1)
    reporter.stop()


def test_a_coordinator_that_was_away_gets_every_event_once_in_order():
    coordinator = Coordinator()
    reporter = EventReporter(coordinator, heartbeat_s=0.01)
    coordinator.away.set()
    for n in range(5):
        reporter.post({"kind": "advanced", "n": n})
    while coordinator.calls < 2:  # it tried and failed
        threading.Event().wait(0.01)
    coordinator.away.clear()
    reporter.post({"kind": "advanced", "n": 5})
    reporter.flush(timeout=30)
    assert [e["n"] for e in coordinator.received] == list(range(6))
    reporter.stop()


def test_beyond_its_bound_the_queue_drops_the_oldest_posted_events():
    coordinator = Coordinator()
    coordinator.away.set()
    reporter = EventReporter(coordinator, heartbeat_s=0.01, max_queued=3)
    for n in range(10):
        reporter.post({"kind": "advanced", "n": n})
    coordinator.away.clear()
    reporter.flush(timeout=30)
    received = [e["n"] for e in coordinator.received]
    assert received == [7, 8, 9]  # the newest, in order
    assert reporter.dropped == 7
    reporter.stop()
