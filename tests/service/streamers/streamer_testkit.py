"""A coordinator and its streamers in one process, without Ray or Flight: a streamer's
calls go straight to the coordinator's action handlers (the same bodies and answers as
over Flight, service.streamers.wire), and its fill runs in process (InProcessFill)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from packer.config import PackingConfig
from packer.index.image_index import ImageIndex
from packer.index.table import CACHE_PATH_KEY
from service.job import ServiceJob
from service.job.planning import Reservation
from service.job.streams import RankStreams
from service.settings import ServiceSettings
from service.state import StateStore
from service.streamers import wire
from service.streamers.coordinator import StreamerCoordinator
from service.streamers.forwarding import ForwardedEvents
from service.streamers.planning import StreamerPlanners
from service.streamers.reporter import EventReporter
from tests.service.service_testkit import SMALL_CONFIG, InProcessFill

KEY = "the-job's-streamer-key"


def without_cache(index: ImageIndex) -> ImageIndex:
    """`index` without the path of its cache: its reject ledger stays in memory (a test
    that records rejects must not leave them beside the session's shared index cache)."""
    metadata = {k: v for k, v in (index.schema.metadata or {}).items() if k != CACHE_PATH_KEY}
    return index.with_metadata(metadata)


def coordinated_job(
    index: pa.Table,
    streamers: int = 2,
    state: StateStore | None = None,
    config: PackingConfig = SMALL_CONFIG,
) -> tuple[ServiceJob, StreamerCoordinator]:
    settings = ServiceSettings(streamers=streamers)
    job = ServiceJob(index, config, state or StateStore(None), settings=settings)
    return job, StreamerCoordinator(job, KEY)


class DirectClient:
    """Streamer `streamer`'s calls (service.streamers.client), made directly."""

    def __init__(self, coordinator: StreamerCoordinator, streamer: int, key: str = KEY) -> None:
        self._actions = coordinator.actions()
        self.streamer = streamer
        self._key = key

    def call(self, action: str, values: dict[str, Any]) -> list[bytes]:
        body = wire.encode({"key": self._key, "streamer": self.streamer, **values})
        return list(self._actions[action](body))

    def reserve(self, epoch: int, window: int) -> Reservation:
        (answer,) = self.call(wire.RESERVE, {"epoch": epoch, "window": window})
        return wire.reservation_from_dict(json.loads(answer))

    def send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        (answer,) = self.call(wire.EVENTS, {"events": events})
        return json.loads(answer)


@dataclass
class LocalStreamer:
    """Streamer `streamer`'s planners and rank streams, as service.streamers.streamer
    builds them, reporting to the coordinator directly."""

    planners: StreamerPlanners
    streams: RankStreams
    reporter: EventReporter

    @classmethod
    def start(
        cls, coordinator: StreamerCoordinator, streamer: int, max_in_flight: int = 4
    ) -> LocalStreamer:
        client = DirectClient(coordinator, streamer)
        reporter = EventReporter(client.send_events, heartbeat_s=0.05)
        planners = StreamerPlanners(coordinator.job.index, client.reserve, reporter)
        streams = RankStreams(
            planners, ForwardedEvents(reporter), max_in_flight=max_in_flight, fill=InProcessFill()
        )
        return cls(planners, streams, reporter)

    def stop(self) -> None:
        self.streams.stop()
        self.reporter.stop()
