"""The Ray-facing packing job behind the service: plans, fills and accounts for batches.

One `ServiceJob` owns the index, the config history (persisted in the state store), one
shared `EpochPlanner` per epoch and the live statistics. Every rank stream of an epoch
plans through the same planner, under one lock, so a config change lands at one window
for all ranks and any batch is the same whichever rank asks first.

A rank stream (`open_rank_stream`) pulls rank r's plans lazily (global batch
k * world_size + r for k = start_batch, ...) and fills them with
`packer.pipeline.stream_filled`: at most `max_in_flight` fill tasks are pending per
stream, and a new one starts only when the stream's consumer takes a filled batch. The
consumer is the Flight server, which takes the next batch only when gRPC accepted the
previous one, so a slow or vanished trainer stops its own stream's work (gRPC flow
control, then this bound) instead of growing a buffer. Other ranks are unaffected: each
stream has its own fill tasks; they share only the planner, and planning is cheap and
never waits for a consumer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from packer.config import ConfigError, PackingConfig
from packer.contract.schema import from_record_batch, packed_schema
from packer.index import header_rejects
from packer.plan import BatchPlan, ConfigHistory, ConfigVersion, EpochPlanner
from packer.simulate import simulate
from service.live_stats import LiveStats
from service.state import RankCursor, StateStore

log = logging.getLogger("navit.service")

# Fields that fix the Arrow schema of a stream (fixed-size lists of seq_len, patch_dim).
SCHEMA_FIELDS = ("patch_size", "seq_len")
MAX_WORLD_SIZE = 65536
# Far beyond any real run, and small enough for SQLite integers and numpy seeds; a huge
# epoch would otherwise become "the furthest planned epoch" where config changes land.
MAX_EPOCH = 1_000_000
MAX_START_BATCH = 2**40
# Planners are cheap to rebuild (deterministic), so only the latest few epochs are kept.
_PLANNERS_KEPT = 4
_CURSOR_SAVE_INTERVAL_S = 1.0

FillFunction = Callable[[Iterable[BatchPlan], int], Iterator[Any]]


class TicketError(ValueError):
    """A do_get ticket is malformed or asks for something this job cannot stream."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigConflict(Exception):
    """A valid config change that cannot apply to the running job (HTTP 409)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class VersionMismatch(Exception):
    """PATCH with If-Match naming another config version than the current one (HTTP 412)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the config is at version {current}")
        self.current = current


class ServiceStopping(Exception):
    """The service is shutting down; a trainer should reconnect with its cursor."""


@dataclass(frozen=True)
class StreamTicket:
    """What a trainer rank asks for: `{"rank", "world_size", "epoch", "start_batch"}`."""

    rank: int
    world_size: int
    epoch: int
    start_batch: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> StreamTicket:
        """Parse the UTF-8 JSON ticket; a TicketError names the offending field."""
        try:
            values = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TicketError(
                "ticket",
                'expected UTF-8 JSON like {"rank": 0, "world_size": 2, "epoch": 0, '
                f'"start_batch": 0}}, got {raw[:80]!r} ({e})',
            ) from None
        if not isinstance(values, dict):
            raise TicketError("ticket", f"expected a JSON object, got {type(values).__name__}")
        known = ("rank", "world_size", "epoch", "start_batch")
        for key in values:
            if key not in known:
                raise TicketError(key, f"unknown ticket field (known: {', '.join(known)})")
        for key in ("rank", "world_size", "epoch"):
            if key not in values:
                raise TicketError(key, "missing")
        parsed: dict[str, int] = {}
        for key in known:
            value = values.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TicketError(key, f"must be an integer, got {value!r}")
            if value < 0:
                raise TicketError(key, f"must be non-negative, got {value}")
            parsed[key] = value
        for key, most in (("epoch", MAX_EPOCH), ("start_batch", MAX_START_BATCH)):
            if parsed[key] > most:
                raise TicketError(key, f"must be at most {most}, got {parsed[key]}")
        if not 1 <= parsed["world_size"] <= MAX_WORLD_SIZE:
            raise TicketError(
                "world_size", f"must lie in [1, {MAX_WORLD_SIZE}], got {parsed['world_size']}"
            )
        if parsed["rank"] >= parsed["world_size"]:
            raise TicketError(
                "rank", f"must be below world_size={parsed['world_size']}, got {parsed['rank']}"
            )
        return cls(**parsed)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "rank": self.rank,
                "world_size": self.world_size,
                "epoch": self.epoch,
                "start_batch": self.start_batch,
            }
        ).encode()


@dataclass
class StreamStatus:
    """One open (or recently closed) rank stream, as /stats shows it."""

    stream_id: int
    rank: int
    world_size: int
    epoch: int
    start_batch: int
    next_batch: int  # this rank's next batch index k not yet handed to the transport
    opened_at: float
    submitted: int = 0  # plans handed to the fill
    received: int = 0  # filled batches taken from the fill
    sent: int = 0  # batches handed to the transport
    max_in_flight_seen: int = 0
    last_sent_at: float | None = None
    closed_at: float | None = None
    end: str = ""  # "", "complete", "closed", "error: ..."

    @property
    def in_flight(self) -> int:
        """Fill tasks started for this stream whose batch was not taken yet."""
        return self.submitted - self.received


@dataclass
class _RankPosition:
    epoch: int
    next_batch: int
    updated_at: float
    batches_sent: int = 0
    open_streams: int = 0
    dirty: bool = False


@dataclass(frozen=True)
class Delivered:
    """A filled batch ready for the transport, with its per-batch metadata."""

    record_batch: pa.RecordBatch
    metadata: dict[str, int]

    def metadata_bytes(self) -> bytes:
        return json.dumps(self.metadata).encode()


@dataclass(frozen=True)
class _RecentBatch:
    """The token layout of a batch sent lately: what the dashboard draws."""

    epoch: int
    rank: int
    batch: int
    global_batch: int
    config_version: int
    segment_ids: np.ndarray  # [B, L] int32
    images_per_seq: np.ndarray  # [B]
    image_ids: list[str]
    labels: np.ndarray  # [N]

    def sequences(self) -> list[dict[str, Any]]:
        out = []
        image = 0
        seq_len = int(self.segment_ids.shape[1])
        for row, n in enumerate(self.images_per_seq.tolist()):
            if n == 0:
                continue
            lengths = np.bincount(self.segment_ids[row], minlength=n + 1)[1:].tolist()
            start = 0
            segments = []
            for slot, length in enumerate(lengths):
                segments.append(
                    {
                        "slot": slot + 1,
                        "start": start,
                        "length": length,
                        "image_id": self.image_ids[image + slot],
                        "label": int(self.labels[image + slot]),
                    }
                )
                start += length
            out.append(
                {
                    "epoch": self.epoch,
                    "rank": self.rank,
                    "batch": self.batch,
                    "global_batch": self.global_batch,
                    "row": row,
                    "config_version": self.config_version,
                    "seq_len": seq_len,
                    "real_tokens": start,
                    "segments": segments,
                }
            )
            image += n
        return out


def index_fingerprint(index: pa.Table) -> str:
    """A digest of the image ids, sizes and header errors: what planning depends on."""
    columns = index.select(["image_id", "width", "height", "key", "error"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, columns.schema) as writer:
        writer.write_table(columns)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def batch_bytes(config: PackingConfig) -> int:
    """Bytes of one batch's patch pixels: batch_size * seq_len * patch_size^2 * 3."""
    return config.batch_size * config.seq_len * config.patch_dim


@dataclass
class JobOptions:
    max_in_flight: int = 4
    recent_sequences: int = 24
    max_batch_bytes: int = 1 << 30  # one batch's pixels; a larger batch_size is refused
    dry_run_images: int = 512  # images planned to vet a config change before accepting it
    simulate_max_sample: int = 20000
    simulate_default_sample: int = 2000


class ServiceJob:
    """The packing job: planner per epoch, config history, live stats, trainer reports."""

    def __init__(
        self,
        index: pa.Table,
        config: PackingConfig,
        state: StateStore,
        *,
        dataset: str = "",
        options: JobOptions | None = None,
        fill: FillFunction | None = None,
    ) -> None:
        self.index = index
        self.state = state
        self.dataset = dataset
        self.options = options or JobOptions()
        self.started_at = time.time()
        self._fill = fill
        self._lock = threading.RLock()  # planners, history, frontier
        self._config_lock = threading.Lock()  # serialises config changes
        self._planners: OrderedDict[int, EpochPlanner] = OrderedDict()
        self._stopping = threading.Event()
        self.stats = LiveStats()
        self._streams: dict[int, StreamStatus] = {}
        self._closed_streams: deque[StreamStatus] = deque(maxlen=32)
        self._next_stream_id = 1
        self._positions: dict[tuple[int, int], _RankPosition] = {}
        self._recent: deque[_RecentBatch] = deque(maxlen=self.options.recent_sequences)
        self._trainers: dict[int, dict] = {}
        self._status_lock = threading.Lock()  # streams, positions, recent, trainers
        self._header_rejects = [reason for _, reason in header_rejects(index)]
        self.num_images = index.num_rows
        self.num_valid_images = index.num_rows - len(self._header_rejects)
        self.history = self._load_history(config)
        self._frontier = state.frontier()
        for cursor in state.cursors():
            self._positions[(cursor.rank, cursor.world_size)] = _RankPosition(
                cursor.epoch, cursor.next_batch, cursor.updated_at
            )

    # -- config ------------------------------------------------------------------------

    def _load_history(self, config: PackingConfig) -> ConfigHistory:
        fingerprint = index_fingerprint(self.index)
        stored = self.state.get_meta("index_fingerprint")
        if stored is not None and stored != fingerprint:
            raise ValueError(
                f"state dir {self.state.state_dir} belongs to another dataset "
                f"({self.state.get_meta('dataset')!r}, {stored[:12]}); its config history "
                "would not reproduce this one's batches: use a new --state-dir"
            )
        history = self.state.load_history()
        if history is None:
            self.check_runnable(config)
            history = ConfigHistory.start(config)
            self.state.set_meta("dataset", self.dataset)
            self.state.set_meta("index_fingerprint", fingerprint)
            self.state.save_history(history)
        elif history.entries[0].config != config:
            # The persisted history decides what was sent; the command line cannot rewrite it.
            log.warning(
                "state dir %s has a config history (latest version %d); using it and "
                "ignoring the config given on the command line (PATCH /config changes it)",
                self.state.state_dir,
                history.latest.version,
            )
        return history

    @property
    def config_version(self) -> ConfigVersion:
        # No lock: reading the last entry is atomic, and the planner lock may be held for a
        # whole window's planning, which a GET /config should not wait for.
        return self.history.entries[-1]

    @property
    def patch_size(self) -> int:
        return self.history.entries[0].config.patch_size

    @property
    def seq_len(self) -> int:
        return self.history.entries[0].config.seq_len

    def stream_schema(self) -> pa.Schema:
        return packed_schema(self.patch_size, self.seq_len, self.config_version.version)

    def describe(self) -> dict[str, Any]:
        """What list_flights / get_flight_info tell a client about the stream."""
        current = self.config_version
        return {
            "dataset": self.dataset,
            "patch_size": self.patch_size,
            "seq_len": self.seq_len,
            "config_version": current.version,
            "batch_size": current.config.batch_size,
            "images": self.num_images,
            "valid_images": self.num_valid_images,
            "max_in_flight": self.options.max_in_flight,
        }

    def check_runnable(self, config: PackingConfig) -> None:
        """Refuse a config this service could not run safely (ConfigError names the field)."""
        if batch_bytes(config) > self.options.max_batch_bytes:
            most = self.options.max_batch_bytes // (config.seq_len * config.patch_dim)
            raise ConfigError(
                "batch_size",
                f"a batch of {config.batch_size} sequences holds {batch_bytes(config)} bytes of "
                f"pixels, more than the service's limit of {self.options.max_batch_bytes}; "
                f"use at most {most}",
            )
        # Plan a sample with it: a config accepted here is one the planner can run.
        sample = self._sample_index(self.options.dry_run_images, seed=1)
        try:
            planner = EpochPlanner(sample, ConfigHistory.start(config), 0)
            for _ in planner.iter_batches():
                pass
        except Exception as e:  # noqa: BLE001 - any planner failure means: refuse it
            raise ConfigError("config", f"the planner cannot run this config: {e}") from None

    def change_point(self) -> tuple[int, int]:
        """The first (epoch, window) no planner has planned: where a change can start."""
        with self._lock:
            planned = dict(self._frontier)
            for epoch, planner in self._planners.items():
                planned[epoch] = max(planned.get(epoch, 0), planner.next_window)
            point = (max(planned), planned[max(planned)]) if planned else (0, 0)
            latest = self.history.latest
            return max(point, (latest.epoch, latest.window))

    def update_config(
        self, changes: dict[str, Any], expected_version: int | None = None
    ) -> tuple[ConfigVersion, list[str]]:
        """Record a config change from the next unplanned window; returns it and the
        fields that changed. Raises VersionMismatch (412), ConfigError (422) or
        ConfigConflict (409)."""
        # One change at a time; the planner lock only for the append, so streams keep
        # planning while a change is vetted.
        with self._config_lock:
            current = self.history.latest
            if expected_version is not None and expected_version != current.version:
                raise VersionMismatch(current.version)
            # A schema field is refused before anything else: no value of it can apply.
            for name in SCHEMA_FIELDS:
                if name in changes and changes[name] != getattr(current.config, name):
                    raise ConfigConflict(
                        name,
                        f"{name} cannot change while the service runs: it fixes the Arrow "
                        f"schema of every live stream ({name}={getattr(current.config, name)}"
                        f"); restart the service with --set {name}={changes[name]} "
                        "and a new --state-dir instead",
                    )
            config = current.config.replace(**changes)
            before = current.config.to_dict()
            changed = [k for k, v in config.to_dict().items() if v != before[k]]
            if not changed:
                return current, []
            self.check_runnable(config)
            with self._lock:
                epoch, window = self.change_point()
                entry = self.history.append(config, epoch, window)
                self.state.save_history(self.history)
        log.info(
            "config version %d from epoch %d window %d: %s", entry.version, epoch, window, changed
        )
        return entry, changed

    # -- simulate ----------------------------------------------------------------------

    def _sample_index(self, size: int, seed: int = 0) -> pa.Table:
        n = self.index.num_rows
        if size >= n:
            return self.index
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        return self.index.take(pa.array(rows))

    def simulate(
        self, changes: dict[str, Any], sample_size: int | None = None, epochs: int = 1
    ) -> dict[str, Any]:
        """Stats a proposed config would give on a sample of this dataset, next to the
        current config's on the same sample. Touches nothing of the running job."""
        size = self.options.simulate_default_sample if sample_size is None else sample_size
        if not 1 <= size <= self.options.simulate_max_sample:
            raise ConfigError(
                "sample_size", f"must lie in [1, {self.options.simulate_max_sample}], got {size}"
            )
        current = self.config_version
        config = current.config.replace(**changes)
        sample = self._sample_index(size)
        try:
            proposed = simulate(sample, ConfigHistory.start(config), epochs)
        except Exception as e:  # noqa: BLE001 - report, never crash the service
            raise ConfigError("config", f"the planner cannot run this config: {e}") from None
        baseline = simulate(sample, ConfigHistory.start(current.config), epochs)
        return {
            "config": config.to_dict(),
            "sample_size": sample.num_rows,
            "epochs": epochs,
            "stats": proposed.to_dict(),
            "baseline_config_version": current.version,
            "baseline": baseline.to_dict(),
        }

    # -- planning ----------------------------------------------------------------------

    def _planner(self, epoch: int) -> EpochPlanner:
        """The shared planner of `epoch` (call with the lock held)."""
        planner = self._planners.get(epoch)
        if planner is None:
            planner = EpochPlanner(self.index, self.history, epoch)
            self._planners[epoch] = planner
            while len(self._planners) > _PLANNERS_KEPT:
                self._planners.popitem(last=False)
            self.stats.add_header_rejected(epoch, self._header_rejects)
        else:
            self._planners.move_to_end(epoch)
        return planner

    def _plan(self, ticket: StreamTicket, k: int) -> BatchPlan | None:
        with self._lock:
            planner = self._planner(ticket.epoch)
            plan = planner.rank_batch(ticket.rank, ticket.world_size, k)
            # Persist the frontier before the plan leaves: a window whose batches may
            # have been sent must never be re-planned with another config.
            if planner.next_window > self._frontier.get(ticket.epoch, 0):
                self._frontier[ticket.epoch] = planner.next_window
                self.state.advance_frontier(ticket.epoch, planner.next_window)
            return plan

    def check_ticket(self, ticket: StreamTicket) -> None:
        with self._lock:
            furthest = max(self._frontier, default=None)
            if furthest is not None and ticket.epoch > furthest + 1:
                # Planning an epoch far ahead would pin every later config change there.
                raise TicketError(
                    "epoch",
                    f"epoch {ticket.epoch} is more than one past the furthest planned epoch "
                    f"{furthest}; ranks move through epochs in order",
                )

    # -- streaming ---------------------------------------------------------------------

    def open_rank_stream(self, ticket: StreamTicket) -> Iterator[Delivered]:
        """Validate `ticket` now (TicketError) and return its lazy stream of batches."""
        if self._stopping.is_set():
            raise ServiceStopping("the service is shutting down")
        self.check_ticket(ticket)
        with self._status_lock:
            status = StreamStatus(
                stream_id=self._next_stream_id,
                rank=ticket.rank,
                world_size=ticket.world_size,
                epoch=ticket.epoch,
                start_batch=ticket.start_batch,
                next_batch=ticket.start_batch,
                opened_at=time.time(),
            )
            self._next_stream_id += 1
            self._streams[status.stream_id] = status
            position = self._positions.setdefault(
                (ticket.rank, ticket.world_size),
                _RankPosition(ticket.epoch, ticket.start_batch, time.time()),
            )
            position.epoch, position.next_batch = ticket.epoch, ticket.start_batch
            position.open_streams += 1
            position.dirty = True
        return self._rank_stream(ticket, status)

    def _fill_function(self) -> FillFunction:
        if self._fill is None:
            from packer.pipeline import stream_filled  # imports Ray: only when streaming

            self._fill = stream_filled
        return self._fill

    def _rank_stream(self, ticket: StreamTicket, status: StreamStatus) -> Iterator[Delivered]:
        plans_by_batch: dict[int, BatchPlan] = {}

        def plans() -> Iterator[BatchPlan]:
            k = ticket.start_batch
            while not self._stopping.is_set():
                plan = self._plan(ticket, k)
                if plan is None:
                    return
                plans_by_batch[plan.batch] = plan
                status.submitted += 1
                status.max_in_flight_seen = max(status.max_in_flight_seen, status.in_flight)
                yield plan
                k += 1

        last_saved = 0.0
        try:
            for filled in self._fill_function()(plans(), self.options.max_in_flight):
                status.received += 1
                if self._stopping.is_set():
                    raise ServiceStopping("the service is shutting down")
                plan = plans_by_batch.pop(filled.batch)
                k = (filled.batch - ticket.rank) // ticket.world_size
                record_batch = filled.record_batch()
                self._account(ticket, plan, filled, record_batch, k)
                yield Delivered(
                    record_batch,
                    {
                        "epoch": ticket.epoch,
                        "batch": k,
                        "global_batch": filled.batch,
                        "rank": ticket.rank,
                        "world_size": ticket.world_size,
                        "config_version": filled.config_version,
                    },
                )
                # The transport asked for the next batch: batch k has left.
                now = time.time()
                status.sent += 1
                status.next_batch = k + 1
                status.last_sent_at = now
                self._advance_position(ticket, k + 1, now)
                if now - last_saved >= _CURSOR_SAVE_INTERVAL_S:
                    self.flush_cursors()
                    last_saved = now
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
            self._close_stream(ticket, status)

    def _account(
        self,
        ticket: StreamTicket,
        plan: BatchPlan,
        filled: Any,
        record_batch: pa.RecordBatch,
        k: int,
    ) -> None:
        packed = from_record_batch(record_batch)
        self.stats.add_delivered(
            plan, packed, [reason for _, reason, _ in filled.rejected], record_batch.nbytes
        )
        if not packed.num_images:
            return  # an all-padding batch: nothing to draw
        # Keep only the small per-token layout (a copy: a view would pin the whole batch,
        # pixels included); the dashboard's dicts are built when it asks.
        recent = _RecentBatch(
            epoch=ticket.epoch,
            rank=ticket.rank,
            batch=k,
            global_batch=plan.batch,
            config_version=plan.config_version,
            segment_ids=packed.segment_ids.copy(),
            images_per_seq=packed.images_per_seq.copy(),
            image_ids=list(packed.image_ids),
            labels=packed.labels.copy(),
        )
        with self._status_lock:
            self._recent.append(recent)

    def _advance_position(self, ticket: StreamTicket, next_batch: int, now: float) -> None:
        with self._status_lock:
            position = self._positions[(ticket.rank, ticket.world_size)]
            position.epoch, position.next_batch = ticket.epoch, next_batch
            position.updated_at = now
            position.batches_sent += 1
            position.dirty = True

    def _close_stream(self, ticket: StreamTicket, status: StreamStatus) -> None:
        with self._status_lock:
            status.closed_at = time.time()
            self._streams.pop(status.stream_id, None)
            self._closed_streams.append(status)
            self._positions[(ticket.rank, ticket.world_size)].open_streams -= 1
        try:
            self.flush_cursors()
        except Exception:  # noqa: BLE001 - a closed store at shutdown must not mask the end
            log.exception("could not save rank cursors")

    def flush_cursors(self) -> None:
        with self._status_lock:
            dirty = [(key, p) for key, p in self._positions.items() if p.dirty]
            for _, p in dirty:
                p.dirty = False
        self.state.save_cursors(
            [RankCursor(r, w, p.epoch, p.next_batch, p.updated_at) for (r, w), p in dirty]
        )

    # -- status for the control plane --------------------------------------------------

    def streams(self) -> list[StreamStatus]:
        with self._status_lock:
            return list(self._streams.values()) + list(self._closed_streams)

    def rank_positions(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each rank's cursor, and its lag behind the furthest rank of its world size."""
        now = time.time() if now is None else now
        with self._status_lock:
            items = sorted(self._positions.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            in_flight: dict[tuple[int, int], int] = {}
            for s in self._streams.values():
                key = (s.rank, s.world_size)
                in_flight[key] = in_flight.get(key, 0) + s.in_flight
            lead: dict[int, tuple[int, int]] = {}
            for (_, w), p in items:
                lead[w] = max(lead.get(w, (0, 0)), (p.epoch, p.next_batch))
            return [
                {
                    "rank": r,
                    "world_size": w,
                    "epoch": p.epoch,
                    "next_batch": p.next_batch,
                    "batches_sent": p.batches_sent,
                    "connected": p.open_streams > 0,
                    "in_flight": in_flight.get((r, w), 0),
                    "lag_epochs": lead[w][0] - p.epoch,
                    "lag_batches": lead[w][1] - p.next_batch if lead[w][0] == p.epoch else None,
                    "idle_s": round(now - p.updated_at, 3),
                }
                for (r, w), p in items
            ]

    def recent_sequences(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last `limit` packed sequences sent, oldest first, with each image's span."""
        limit = limit or self.options.recent_sequences
        with self._status_lock:
            batches = list(self._recent)
        sequences: list[dict[str, Any]] = []
        for recent in reversed(batches):
            sequences[:0] = recent.sequences()
            if len(sequences) >= limit:
                break
        return sequences[-limit:]

    def report_trainer(self, rank: int, report: dict[str, Any]) -> dict[str, Any]:
        step_time = report.get("step_time_s") or 0.0
        wait = report.get("data_wait_s") or 0.0
        fraction = min(wait / step_time, 1.0) if step_time > 0 else 0.0
        entry = {
            **report,
            "rank": rank,
            "data_wait_fraction": round(fraction, 4),
            # A trainer that spends a fifth of its step waiting for data is data-starved.
            "starved": fraction > 0.2,
            "received_at": time.time(),
        }
        with self._status_lock:
            self._trainers[rank] = entry
        return entry

    def trainers(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self._status_lock:
            entries = [dict(e) for _, e in sorted(self._trainers.items())]
        for e in entries:
            e["age_s"] = round(now - e.pop("received_at"), 3)
        return entries

    def summary(self) -> dict[str, Any]:
        """Everything GET /stats shows."""
        now = time.time()
        current = self.config_version
        packing = self.stats.packing()
        by_version = self.stats.by_version()
        configs = {e.version: e for e in list(self.history.entries)}
        with self._status_lock:
            active = len(self._streams)
            max_seen = max((s.max_in_flight_seen for s in self._streams.values()), default=0)
        trainers = self.trainers(now)
        return {
            "dataset": self.dataset,
            "uptime_s": round(now - self.started_at, 3),
            "config_version": current.version,
            "images": self.num_images,
            "valid_images": self.num_valid_images,
            "efficiency": packing["efficiency"],
            "packing": packing,
            "throughput": self.stats.throughput(now),
            "by_config_version": [
                {
                    "config_version": v,
                    "from_epoch": configs[v].epoch if v in configs else None,
                    "from_window": configs[v].window if v in configs else None,
                    "stats": s,
                }
                for v, s in by_version.items()
            ],
            "rejected_by_reason": packing["rejected_by_reason"],
            "ranks": self.rank_positions(now),
            "streams": {
                "active": active,
                "max_in_flight": self.options.max_in_flight,
                "max_in_flight_seen": max_seen,
            },
            "trainers": trainers,
            "trainers_starved": sum(1 for t in trainers if t["starved"]),
        }

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Make every stream end at its next batch (ServiceStopping) and save cursors."""
        self._stopping.set()
        self.flush_cursors()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()
