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

Each rank's position is a `Cursor`: the next batch not yet handed to the transport. A
stream tells what it does as `StreamEvents`: opened, an epoch's header rejects, each
batch delivered, the cursor moved (when the transport asks for the next batch: the
previous one has left), closed. In this process the job's recorder keeps them
(service.job.recorder: cursors saved per batch, live stats, layouts); in a streamer a
forwarder sends them to the coordinator (service.streamers).

The planners behind a stream are `RankPlanners`: the job's shared planners
(service.job.planning), or a streamer's, which reserve every window with the
coordinator before planning it (service.streamers.planning).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from packer.contract.cursor import BatchMetadata, Cursor, TicketError
from packer.contract.schema import PackedBatch, from_record_batch
from packer.image.reject import Reject
from packer.plan.batch_plan import BatchPlan
from service.batch_source import OutgoingBatch, ServiceStopping
from service.live_stats import Delivery

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


class RankPlanners(Protocol):
    """The planners a rank stream plans through (see the module doc)."""

    def plan(self, cursor: Cursor) -> BatchPlan | None: ...

    def rejected_before_planning(self, epoch: int) -> list[Reject]: ...

    def record_rejects(self, rejected: list[Reject]) -> int: ...

    def check_epoch(self, epoch: int) -> None: ...


class StreamEvents(Protocol):
    """What a rank stream tells about itself (see the module doc)."""

    def opened(self, cursor: Cursor) -> None: ...

    def header_rejected(self, epoch: int, reasons: list[str]) -> None: ...

    def delivered(self, metadata: BatchMetadata, packed: PackedBatch, delivery: Delivery) -> None:
        """A filled batch is handed to the transport: the batch as numpy arrays, and what
        it counts (live_stats.Delivery)."""

    def advanced(self, cursor: Cursor, in_flight: int) -> None: ...

    def closed(self, cursor: Cursor) -> None: ...

    def flush(self) -> None: ...


class RankStreams:
    """The rank streams of one job, their statuses and each rank's cursor."""

    def __init__(
        self,
        planners: RankPlanners,
        events: StreamEvents,
        *,
        max_in_flight: int,
        max_world_size: int = 1024,
        fill: FillFunction | None = None,
    ) -> None:
        self._planners = planners
        self._events = events
        self.max_in_flight = max_in_flight
        self.max_world_size = max_world_size
        self._fill = fill
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the statuses below
        self._open: dict[int, StreamStatus] = {}
        self._closed: deque[StreamStatus] = deque(maxlen=_CLOSED_STREAMS_KEPT)
        self._next_stream_id = 1

    def check(self, cursor: Cursor) -> None:
        """Refuse a stream now: the service is stopping (ServiceStopping), or the world
        size is above the limit (TicketError)."""
        if self._stopping.is_set():
            raise ServiceStopping("the service is shutting down")
        if cursor.world_size > self.max_world_size:
            raise TicketError(
                "world_size",
                f"must be at most {self.max_world_size} (the service's max_world_size), "
                f"got {cursor.world_size}",
            )

    def open(self, cursor: Cursor) -> Iterator[OutgoingBatch]:
        """Check `cursor` now (TicketError, ServiceStopping) and return its lazy stream."""
        self.check(cursor)
        self._planners.check_epoch(cursor.epoch)
        self._events.opened(cursor)
        with self._lock:
            status = StreamStatus(self._next_stream_id, cursor)
            self._next_stream_id += 1
            self._open[status.stream_id] = status
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
            self._events.header_rejected(start.epoch, [r.reason for r in rejected])
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
                rejected = [r.reason for r in filled.rejected]
                notes = [note.kind for note in filled.notes]
                packed = from_record_batch(record_batch)
                delivery = Delivery.of(plan, packed, rejected, record_batch.nbytes, notes)
                self._events.delivered(metadata, packed, delivery)
                yield OutgoingBatch(record_batch, metadata)
                # The transport asked for the next batch: this one has left.
                status.sent += 1
                status.cursor = cursor.advanced()
                self._events.advanced(status.cursor, status.in_flight)
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

    def _close(self, status: StreamStatus) -> None:
        with self._lock:
            status.closed_at = time.time()
            self._open.pop(status.stream_id, None)
            self._closed.append(status)
        self._events.closed(status.cursor)

    def stop(self) -> None:
        """Make every stream end at its next batch (ServiceStopping) and save cursors."""
        self._stopping.set()
        self._events.flush()

    # -- what /stats shows -------------------------------------------------------------

    def statuses(self) -> list[StreamStatus]:
        """The open streams, then the last closed ones."""
        with self._lock:
            return list(self._open.values()) + list(self._closed)

    def open_counts(self) -> tuple[int, int]:
        """(open streams, the most fill tasks any of them had in flight)."""
        with self._lock:
            active = len(self._open)
            most = max((s.max_in_flight_seen for s in self._open.values()), default=0)
        return active, most
