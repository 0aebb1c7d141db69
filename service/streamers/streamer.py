"""`Streamer`: one streamer's work, in its own process on a Ray node (service.streamers.pool
runs it as an actor): plan, fill and send the batches of its ranks over a Flight server
of its own.

It starts from what the coordinator tells it (service.streamers.client): the index, then
a reservation per window (service.streamers.planning). Its rank streams are the
service's own (`RankStreams`: the same planner calls, the same bounded fill on Ray, the
same `BatchMetadata`), so a batch it sends is byte for byte the one the service would
send in-process for the same config history. Its Flight server is the service's own
class (`PackedFlightServer`) with the same token and TLS; it serves the ranks `r` with
`streamer_of(r, count) == streamer` and refuses the others, naming who serves them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from packer.contract.cursor import Cursor
from packer.contract.schema import packed_schema
from service.batch_source import OutgoingBatch, ServedElsewhere
from service.flight import PackedFlightServer
from service.job.streamer_registry import streamer_of
from service.job.streams import FillFunction, RankStreams
from service.streamers.client import CoordinatorClient
from service.streamers.forwarding import ForwardedEvents
from service.streamers.planning import StreamerPlanners
from service.streamers.reporter import EventReporter

log = logging.getLogger("navit.service.streamers")


@dataclass(frozen=True)
class StreamerSpec:
    """What streamer `streamer` of `count` needs to start; the rest it asks the
    coordinator at `coordinator`. The TLS pair travels as PEM bytes (a streamer's node
    need not have the service's files)."""

    streamer: int
    count: int
    coordinator: str
    key: str = field(repr=False)
    patch_size: int
    seq_len: int
    class_names: list[str]
    dataset: str = ""
    token: str | None = field(default=None, repr=False)
    tls_cert: bytes | None = field(default=None, repr=False)
    tls_key: bytes | None = field(default=None, repr=False)
    port: int = 0  # 0: any free port
    max_in_flight: int = 4
    max_world_size: int = 1024
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.streamer < self.count:
            raise ValueError(f"streamer must lie in [0, {self.count}), got {self.streamer}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must lie in [0, 65535], got {self.port}")

    @property
    def scheme(self) -> str:
        return "grpc+tls" if self.tls_cert is not None else "grpc+tcp"


class StreamerSource:
    """The batch source of a streamer's Flight server (service.batch_source)."""

    def __init__(
        self,
        spec: StreamerSpec,
        streams: RankStreams,
        reporter: EventReporter,
        config_version: int,
    ) -> None:
        self.spec = spec
        self.streams = streams
        self._reporter = reporter
        self._first_version = config_version

    def stream_schema(self) -> pa.Schema:
        # The version of the config at stream start, as far as this streamer knows (the
        # coordinator tells it with every answer); each batch carries its own.
        version = self._reporter.config_version or self._first_version
        return packed_schema(
            self.spec.patch_size, self.spec.seq_len, version, class_names=self.spec.class_names
        )

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.spec.dataset,
            "patch_size": self.spec.patch_size,
            "seq_len": self.spec.seq_len,
            "streamer": self.spec.streamer,
            "streamers": self.spec.count,
            "max_in_flight": self.spec.max_in_flight,
        }

    def _check_rank(self, cursor: Cursor) -> None:
        owner = streamer_of(cursor.rank, self.spec.count)
        if owner != self.spec.streamer:
            raise ServedElsewhere(
                f"rank {cursor.rank} is served by streamer {owner}, not {self.spec.streamer}: "
                f"ask the coordinator at {self.spec.coordinator} (get_flight_info)"
            )

    def locate(self, cursor: Cursor) -> list[str]:
        self._check_rank(cursor)
        return []

    def open_rank_stream(self, cursor: Cursor) -> Iterator[OutgoingBatch]:
        self._check_rank(cursor)
        return self.streams.open(cursor)

    def report_trainer(self, rank: int, report: dict[str, Any]) -> dict[str, Any]:
        self._reporter.post({"kind": "report", "rank": rank, "report": report})
        return report


class Streamer:
    """A running streamer: its Flight server on `host`, its streams, its reporter."""

    def __init__(self, spec: StreamerSpec, host: str, fill: FillFunction | None = None) -> None:
        self.spec = spec
        self.host = host
        self.client = CoordinatorClient(
            spec.coordinator,
            key=spec.key,
            streamer=spec.streamer,
            token=spec.token,
            tls_root=spec.tls_cert,
        )
        started = time.perf_counter()
        index = self.client.index()
        self.reporter = EventReporter(self.client.send_events)
        try:
            planners = StreamerPlanners(index, self.client.reserve, self.reporter)
            self.streams = RankStreams(
                planners,
                ForwardedEvents(self.reporter),
                max_in_flight=spec.max_in_flight,
                max_world_size=spec.max_world_size,
                fill=fill,
            )
            # An empty call says which config version is current.
            version = int(self.client.send_events([])["config_version"])
            source = StreamerSource(spec, self.streams, self.reporter, version)
            self.server = PackedFlightServer(
                source,
                host,
                spec.port,
                token=spec.token,
                tls_cert=spec.tls_cert,
                tls_key=spec.tls_key,
            )
        except BaseException:
            self.reporter.stop(timeout=1.0)
            raise
        self.port = self.server.port
        self.location = f"{spec.scheme}://{_url_host(host)}:{self.port}"
        self.restarts = self.client.register(self.location, host, os.getpid())
        log.info(
            "streamer %d at %s (index of %d images in %.1f s)",
            spec.streamer,
            self.location,
            index.num_rows,
            time.perf_counter() - started,
        )

    def stop(self) -> None:
        """End the streams (they tell trainers to reconnect), send the last events, stop
        the Flight server (bounded: a stream whose trainer stopped reading is left)."""
        self.streams.stop()
        stopper = threading.Thread(target=self.server.shutdown, daemon=True)
        stopper.start()
        stopper.join(self.spec.shutdown_timeout_s)
        self.reporter.stop(self.spec.shutdown_timeout_s)
        self.client.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
