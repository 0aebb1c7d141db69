"""Rank streams: each trainer rank's batches, planned lazily, filled with bounded work.

A rank stream (`RankStreams.open`) pulls rank r's plans from the shared planners (its
k-th batch is global batch `global_batch_index(r, W, k)`, for k = the cursor's
next_batch, next_batch + 1, ...) and fills them with `packer.pipeline.stream_filled`: at
most `max_in_flight` fill tasks are pending per stream, and a new one starts only when
the stream's consumer takes a filled batch. The consumer is the Flight server, which
takes the next batch only when gRPC accepted the previous one, so a slow or vanished
trainer stops its own stream's work (gRPC flow control, then this bound) instead of
growing a buffer. Other ranks are unaffected: each stream has its own fill tasks; they
share only the planners.

Each rank's position is a `Cursor`: the next batch not yet handed to the transport. It
advances when the transport asks for the next batch (the previous one has left) and is
saved to the state store right then, one small SQLite upsert per batch, so the store
never lags behind a stalled stream: after a `kill -9` it shows where each rank stood.
It is for /stats and an operator; a reconnecting trainer resumes from its own ticket.

Per-rank state is kept for one world size, the latest one a stream opened with (up to
`max_world_size` ranks): a stream of a new world size replaces the old world size's rows
in memory and in the store. A stream of an older world size still open keeps streaming,
but its rank is no longer shown.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from packer.contract.cursor import BatchMetadata, Cursor, TicketError
from packer.contract.schema import from_record_batch
from packer.plan.batch_plan import BatchPlan
from service.batch_source import OutgoingBatch, ServiceStopping
from service.job.layouts import RecentLayouts
from service.job.planning import EpochPlanners
from service.live_stats import LiveStats
from service.state import CursorRecord, StateStore

if TYPE_CHECKING:
    from packer.pipeline import EncodedBatch

log = logging.getLogger("navit.service")

_CLOSED_STREAMS_KEPT = 32

# stream_filled's shape: (plans, max_in_flight) -> filled batches in plan order.
FillFunction = Callable[[Iterable[BatchPlan], int], Iterator["EncodedBatch"]]


@dataclass
class StreamStatus:
    """One open (or recently closed) rank stream."""

    stream_id: int
    cursor: Cursor  # the next batch not yet handed to the transport
    submitted: int = 0  # plans handed to the fill
    received: int = 0  # filled batches taken from the fill
    sent: int = 0  # batches handed to the transport
    max_in_flight_seen: int = 0
    closed_at: float | None = None
    end: str = ""  # "", "complete", "closed", "error: ..."

    @property
    def in_flight(self) -> int:
        """Fill tasks started for this stream whose batch was not taken yet."""
        return self.submitted - self.received


@dataclass
class RankStatus:
    """A rank's cursor, and what /stats tells about it besides."""

    cursor: Cursor
    updated_at: float  # when its cursor last moved
    batches_sent: int = 0
    open_streams: int = 0


class RankStreams:
    """The rank streams of one job, their statuses and each rank's cursor."""

    def __init__(
        self,
        planners: EpochPlanners,
        state: StateStore,
        stats: LiveStats,
        recent: RecentLayouts,
        *,
        max_in_flight: int,
        max_world_size: int = 1024,
        fill: FillFunction | None = None,
    ) -> None:
        self._planners = planners
        self._state = state
        self._stats = stats
        self._recent = recent
        self.max_in_flight = max_in_flight
        self.max_world_size = max_world_size
        self._fill = fill
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the statuses below
        self._open: dict[int, StreamStatus] = {}
        self._closed: deque[StreamStatus] = deque(maxlen=_CLOSED_STREAMS_KEPT)
        self._next_stream_id = 1
        # Serialises writes to the store's cursors, so that a save never lands after (and
        # undoes) the pruning of its world size. Taken before self._lock, never inside it.
        self._save_lock = threading.Lock()
        stored = state.cursors()
        # The world size whose ranks are kept: the one that moved last.
        self._world_size = (
            max(stored, key=lambda r: r.updated_at).cursor.world_size if stored else 0
        )
        self._ranks: dict[tuple[int, int], RankStatus] = {
            (r.cursor.rank, r.cursor.world_size): RankStatus(r.cursor, r.updated_at)
            for r in stored
            if r.cursor.world_size == self._world_size
        }
        if len(self._ranks) < len(stored):
            state.keep_world_size(self._world_size)

    def open(self, cursor: Cursor) -> Iterator[OutgoingBatch]:
        """Check `cursor` now (TicketError, ServiceStopping) and return its lazy stream."""
        if self._stopping.is_set():
            raise ServiceStopping("the service is shutting down")
        if cursor.world_size > self.max_world_size:
            raise TicketError(
                "world_size",
                f"must be at most {self.max_world_size} (the service's max_world_size), "
                f"got {cursor.world_size}",
            )
        self._planners.check_epoch(cursor.epoch)
        now = time.time()
        key = (cursor.rank, cursor.world_size)
        with self._save_lock:
            with self._lock:
                status = StreamStatus(self._next_stream_id, cursor)
                self._next_stream_id += 1
                self._open[status.stream_id] = status
                new_world = cursor.world_size != self._world_size
                if new_world:
                    # A new world size replaces the old one's ranks (see the docstring).
                    self._world_size = cursor.world_size
                    self._ranks.clear()
                rank = self._ranks.setdefault(key, RankStatus(cursor, now))
                rank.cursor = cursor
                rank.updated_at = now
                rank.open_streams += 1
                record = CursorRecord(cursor, now)
            if new_world:
                self._state.keep_world_size(cursor.world_size)
            self._state.save_cursors([record])
        return self._stream(cursor, status)

    def _fill_function(self) -> FillFunction:
        if self._fill is None:
            from packer.pipeline import stream_filled  # imports Ray: only when streaming

            self._fill = stream_filled
        return self._fill

    def _stream(self, start: Cursor, status: StreamStatus) -> Iterator[OutgoingBatch]:
        planned: dict[int, tuple[Cursor, BatchPlan]] = {}  # global batch -> its cursor, plan

        def plans() -> Iterator[BatchPlan]:
            # An epoch's rejects before planning (unreadable headers, decode failures
            # found in an earlier epoch) count once, when it is first planned.
            rejected = self._planners.rejected_before_planning(start.epoch)
            self._stats.add_header_rejected(start.epoch, [r.reason for r in rejected])
            cursor = start
            while not self._stopping.is_set():
                plan = self._planners.plan(cursor)
                if plan is None:
                    return
                planned[cursor.global_batch] = (cursor, plan)
                status.submitted += 1
                status.max_in_flight_seen = max(status.max_in_flight_seen, status.in_flight)
                yield plan
                cursor = cursor.advanced()

        try:
            for filled in self._fill_function()(plans(), self.max_in_flight):
                status.received += 1
                if self._stopping.is_set():
                    raise ServiceStopping("the service is shutting down")
                cursor, plan = planned.pop(filled.global_batch)
                metadata = BatchMetadata(
                    epoch=cursor.epoch,
                    batch=cursor.next_batch,
                    global_batch=cursor.global_batch,
                    rank=cursor.rank,
                    config_version=filled.config_version,
                )
                record_batch = filled.record_batch()
                # Left out of every epoch not planned yet (packer.index.reject_ledger).
                self._planners.record_rejects(filled.rejected)
                self._account(metadata, plan, filled, record_batch)
                yield OutgoingBatch(record_batch, metadata)
                # The transport asked for the next batch: this one has left.
                status.sent += 1
                status.cursor = cursor.advanced()
                self._advance(status.cursor, time.time())
            if self._stopping.is_set() and not status.end:
                raise ServiceStopping("the service is shutting down")
            status.end = "complete"
        except GeneratorExit:
            status.end = "closed"  # the trainer went away (or the server stopped)
            raise
        except Exception as e:
            status.end = f"error: {e}"
            raise
        finally:
            self._close(status)

    def _account(
        self,
        metadata: BatchMetadata,
        plan: BatchPlan,
        filled: EncodedBatch,
        record_batch: pa.RecordBatch,
    ) -> None:
        packed = from_record_batch(record_batch)
        rejected = [r.reason for r in filled.rejected]
        notes = [note.kind for note in filled.notes]
        self._stats.add_delivered(plan, packed, rejected, record_batch.nbytes, notes=notes)
        self._recent.add(metadata, packed)

    def _advance(self, cursor: Cursor, now: float) -> None:
        """Move the rank's cursor and save it (not for a world size no longer kept)."""
        key = (cursor.rank, cursor.world_size)
        with self._save_lock:
            with self._lock:
                rank = self._ranks.get(key)
                if rank is None:
                    return
                rank.cursor = cursor
                rank.updated_at = now
                rank.batches_sent += 1
                record = CursorRecord(cursor, now)
            self._save([record])

    def _save(self, records: list[CursorRecord]) -> None:
        """Save cursors (with the save lock held); a store closed at shutdown is logged,
        it must not end a stream with an error."""
        try:
            self._state.save_cursors(records)
        except sqlite3.Error:
            log.warning("could not save rank cursors %s", records, exc_info=True)

    def _close(self, status: StreamStatus) -> None:
        with self._lock:
            status.closed_at = time.time()
            self._open.pop(status.stream_id, None)
            self._closed.append(status)
            rank = self._ranks.get((status.cursor.rank, status.cursor.world_size))
            if rank is not None:
                rank.open_streams -= 1

    def flush_cursors(self) -> None:
        """Save every kept rank's cursor (each is saved as it moves; this is for stop)."""
        with self._save_lock:
            with self._lock:
                records = [CursorRecord(r.cursor, r.updated_at) for r in self._ranks.values()]
            self._save(records)

    def stop(self) -> None:
        """Make every stream end at its next batch (ServiceStopping) and save cursors."""
        self._stopping.set()
        self.flush_cursors()

    # -- what /stats shows -------------------------------------------------------------

    def statuses(self) -> list[StreamStatus]:
        """The open streams, then the last closed ones."""
        with self._lock:
            return list(self._open.values()) + list(self._closed)

    def ranks(self) -> list[tuple[RankStatus, int]]:
        """A copy of each rank's status with its fill tasks in flight, by (world, rank)."""
        with self._lock:
            in_flight: dict[tuple[int, int], int] = {}
            for s in self._open.values():
                key = (s.cursor.rank, s.cursor.world_size)
                in_flight[key] = in_flight.get(key, 0) + s.in_flight
            items = sorted(self._ranks.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            return [(dataclasses.replace(rank), in_flight.get(key, 0)) for key, rank in items]

    def positions(self, now: float) -> list[dict[str, Any]]:
        """Each kept rank's cursor and its lag behind the furthest rank (`rank_rows`)."""
        return rank_rows(self.ranks(), now)

    def open_counts(self) -> tuple[int, int]:
        """(open streams, the most fill tasks any of them had in flight)."""
        with self._lock:
            active = len(self._open)
            most = max((s.max_in_flight_seen for s in self._open.values()), default=0)
        return active, most


def rank_rows(ranks: list[tuple[RankStatus, int]], now: float) -> list[dict[str, Any]]:
    """Each rank's cursor and its lag behind the furthest rank of its world size.

    With ranks 0 and 1 of 2 at (epoch 0, batch 5) and (epoch 0, batch 3), rank 1 lags
    by 2 batches; a rank an epoch behind lags by 1 epoch and lag_batches is None.
    """
    lead: dict[int, tuple[int, int]] = {}
    for rank, _ in ranks:
        c = rank.cursor
        lead[c.world_size] = max(lead.get(c.world_size, (0, 0)), (c.epoch, c.next_batch))
    rows = []
    for rank, in_flight in ranks:
        c = rank.cursor
        lead_epoch, lead_batch = lead[c.world_size]
        rows.append(
            {
                "rank": c.rank,
                "world_size": c.world_size,
                "epoch": c.epoch,
                "next_batch": c.next_batch,
                "batches_sent": rank.batches_sent,
                "connected": rank.open_streams > 0,
                "in_flight": in_flight,
                "lag_epochs": lead_epoch - c.epoch,
                "lag_batches": lead_batch - c.next_batch if lead_epoch == c.epoch else None,
                "idle_s": round(now - rank.updated_at, 3),
            }
        )
    return rows
