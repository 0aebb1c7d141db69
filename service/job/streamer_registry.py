"""The job's streamers as the coordinator knows them: where each listens, which ranks it
serves, what it delivered, how often it restarted.

With `--streamers N` the batches leave from N streamers (service.streamers), not from
this process. Rank r is served by streamer `streamer_of(r, N) = r % N`, for every world
size and epoch, so a rank's stream never moves between streamers and a restarted one
takes its own ranks back. A streamer registers its Flight location when it starts and
again after every restart (Ray restarts the actor; its new Flight server may listen on
another port), and the coordinator answers `get_flight_info` with the location
registered last (`locate`). What the streamers deliver arrives here too, for the rows of
/stats (`rows`): node, ranks, images/s and bytes/s over the last minute, restarts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from packer.contract.cursor import Cursor
from service.batch_source import StreamerFailed, StreamerUnavailable
from service.live_stats import Delivery, LiveStats

# A streamer that has said nothing for this long (it sends at least once a second) is
# shown as "silent": stopped, restarting, or cut off from the coordinator.
SILENT_AFTER_S = 5.0


def streamer_of(rank: int, streamers: int) -> int:
    """The streamer that serves `rank`: rank % streamers (ranks 0..5 over 2 streamers:
    0, 1, 0, 1, 0, 1)."""
    return rank % streamers


@dataclass
class StreamerRecord:
    """One streamer as registered, and what it delivered."""

    streamer: int
    location: str | None = None
    node: str = ""
    pid: int | None = None
    registrations: int = 0
    last_seen: float | None = None
    failure: str | None = None
    world_size: int = 0  # of the ranks below: the world size of its latest stream
    ranks: set[int] = field(default_factory=set)
    stats: LiveStats = field(default_factory=LiveStats)

    @property
    def restarts(self) -> int:
        return max(self.registrations - 1, 0)

    def state(self, now: float) -> str:
        if self.failure is not None:
            return "failed"
        if self.location is None:
            return "starting"
        if self.last_seen is None or now - self.last_seen > SILENT_AFTER_S:
            return "silent"
        return "up"


class StreamerRegistry:
    """Registrations and deliveries of the job's `count` streamers."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a registry needs at least one streamer, got {count}")
        self.count = count
        self._lock = threading.Lock()
        self._records = [StreamerRecord(i) for i in range(count)]

    def record(self, streamer: int) -> StreamerRecord:
        if not 0 <= streamer < self.count:
            raise ValueError(f"streamer must lie in [0, {self.count}), got {streamer}")
        return self._records[streamer]

    def registered(
        self, streamer: int, location: str, node: str, pid: int, now: float | None = None
    ) -> int:
        """A streamer (re)started and listens at `location`; returns its restarts."""
        with self._lock:
            record = self.record(streamer)
            record.location, record.node, record.pid = location, node, pid
            record.registrations += 1
            record.failure = None
            record.last_seen = time.time() if now is None else now
            return record.restarts

    def failed(self, streamer: int, reason: str) -> None:
        """A streamer cannot serve (see StreamerFailed)."""
        with self._lock:
            self.record(streamer).failure = reason

    def seen(self, streamer: int, now: float | None = None) -> None:
        with self._lock:
            self.record(streamer).last_seen = time.time() if now is None else now

    def opened(self, streamer: int, cursor: Cursor) -> None:
        with self._lock:
            record = self.record(streamer)
            if cursor.world_size != record.world_size:
                record.world_size, record.ranks = cursor.world_size, set()
            record.ranks.add(cursor.rank)

    def delivered(self, streamer: int, delivery: Delivery, now: float | None = None) -> None:
        self.record(streamer).stats.add_delivery(delivery, now)

    def locate(self, cursor: Cursor) -> list[str]:
        """The location of the streamer that serves `cursor.rank` (StreamerUnavailable
        before it registered, StreamerFailed once it cannot serve)."""
        streamer = streamer_of(cursor.rank, self.count)
        with self._lock:
            record = self.record(streamer)
            failure, location = record.failure, record.location
        if failure is not None:
            raise StreamerFailed(
                f"streamer {streamer} (serving rank {cursor.rank}) is down: {failure}"
            )
        if location is None:
            raise StreamerUnavailable(
                f"streamer {streamer} (serving rank {cursor.rank}) has not started yet"
            )
        return [location]

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per streamer for /stats (service.api.schemas.StreamerOut)."""
        now = time.time() if now is None else now
        with self._lock:
            records = [
                (r, sorted(r.ranks), r.state(now), r.last_seen, r.restarts) for r in self._records
            ]
        rows = []
        for record, ranks, state, last_seen, restarts in records:
            throughput = record.stats.throughput(now)
            rows.append(
                {
                    "streamer": record.streamer,
                    "state": state,
                    "node": record.node,
                    "location": record.location,
                    "pid": record.pid,
                    "world_size": record.world_size,
                    "ranks": ranks,
                    "restarts": restarts,
                    "failure": record.failure,
                    "batches": throughput["run"]["batches"],
                    "images": throughput["run"]["images"],
                    "bytes": throughput["run"]["bytes"],
                    "images_per_s": throughput["last_minute"]["images_per_s"],
                    "bytes_per_s": throughput["last_minute"]["bytes_per_s"],
                    "seen_s_ago": None if last_seen is None else round(now - last_seen, 3),
                }
            )
        return rows
