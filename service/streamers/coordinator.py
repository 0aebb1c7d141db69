"""`StreamerCoordinator`: the service's side of its streamers, as Flight actions.

The service stays the job's one authority with streamers running: the config history,
the planned frontier and the reject ledger (through `EpochPlanners.reserve`), the rank
cursors in the state store, the live statistics and the trainers' reports. A streamer
asks it for the index once, registers its location, reserves every window before it
plans it, and sends what its streams did as events (service.streamers.wire), which are
replayed here into the job's recorder, so /stats, Prometheus and the dashboard show the
whole job as if the batches had left from this process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from packer.contract.cursor import Cursor, TicketError
from packer.image.reject import Reject
from service.flight import ActionHandler
from service.job import ServiceJob
from service.job.layouts import RenderedLayout
from service.job.streamer_registry import StreamerRegistry
from service.live_stats import Delivery
from service.streamers import wire

log = logging.getLogger("navit.service.streamers")


class StreamerCoordinator:
    """Answers the streamers of `job` (whose `streamers` registry it feeds)."""

    def __init__(self, job: ServiceJob, key: str) -> None:
        if job.streamers is None:
            raise ValueError("the job has no streamers (settings.streamers is 0)")
        self.job = job
        self.registry: StreamerRegistry = job.streamers
        self._key = key
        self._index_ipc: pa.Buffer | None = None

    def actions(self) -> dict[str, ActionHandler]:
        """The Flight actions the coordinator's server takes from streamers."""
        return {
            wire.INDEX: self._index,
            wire.REGISTER: self._register,
            wire.RESERVE: self._reserve,
            wire.EVENTS: self._events,
        }

    def _body(self, raw: bytes) -> tuple[dict[str, Any], int]:
        values = wire.decode(raw, self._key)
        streamer = wire.integer(values, "streamer")
        if streamer >= self.registry.count:
            raise wire.WireError(f"streamer: this job has {self.registry.count}, got {streamer}")
        return values, streamer

    def _index(self, raw: bytes) -> Iterator[pa.Buffer]:
        self._body(raw)
        if self._index_ipc is None:
            # The job's rows only (its held-out images left out), every column, as a table
            # of one record batch. Without a holdout that is the whole table, its chunks
            # joined: the same stream as a take of every row, without the take.
            index = self.job.index
            if index.rows is None:
                table = index.table.combine_chunks()
            else:
                table = index.take(index.table.column_names, index.table_rows())
                table = table.replace_schema_metadata(index.schema.metadata)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            self._index_ipc = sink.getvalue()
        data = self._index_ipc
        # Slices of the one buffer (no copies); flight.Result takes a pa.Buffer.
        return (
            data[i : i + wire.INDEX_CHUNK_BYTES]
            for i in range(0, max(data.size, 1), wire.INDEX_CHUNK_BYTES)
        )

    def _register(self, raw: bytes) -> Iterator[bytes]:
        values, streamer = self._body(raw)
        if values.get("error") is not None:
            reason = " ".join(str(values["error"]).split())[:300]
            self.registry.failed(streamer, reason)
            log.error("streamer %d cannot serve: %s", streamer, reason)
            return iter([wire.encode({"restarts": self.registry.record(streamer).restarts})])
        location, node = values.get("location"), values.get("node")
        if not isinstance(location, str) or not isinstance(node, str):
            raise wire.WireError("location and node: expected strings")
        restarts = self.registry.registered(streamer, location, node, wire.integer(values, "pid"))
        if restarts:
            log.warning(
                "streamer %d restarted (%d) on %s at %s", streamer, restarts, node, location
            )
        else:
            log.info("streamer %d serves on %s at %s", streamer, node, location)
        return iter([wire.encode({"restarts": restarts})])

    def _reserve(self, raw: bytes) -> Iterator[bytes]:
        values, streamer = self._body(raw)
        epoch, window = wire.integer(values, "epoch"), wire.integer(values, "window")
        reservation = self.job.config_control.planners.reserve(epoch, window)
        self.registry.seen(streamer)
        return iter([wire.encode(wire.reservation_to_dict(reservation))])

    def _events(self, raw: bytes) -> Iterator[bytes]:
        values, streamer = self._body(raw)
        events = values.get("events")
        if not isinstance(events, list):
            raise wire.WireError("events: expected a list")
        errors: dict[str, list[str]] = {}
        for position, event in enumerate(events):
            try:
                self._apply(streamer, event)
            except TicketError as error:
                errors[str(position)] = [error.field, error.message]
            except (KeyError, TypeError, ValueError) as error:
                # One malformed event must not cost the others (cursors, stats).
                log.warning("streamer %d sent a malformed event: %s", streamer, error)
        self.registry.seen(streamer)
        planners = self.job.config_control.planners
        reply = {
            "config_version": self.job.config_version.version,
            "furthest_epoch": planners.furthest_epoch(),
            "errors": errors,
        }
        return iter([wire.encode(reply)])

    def _apply(self, streamer: int, event: dict[str, Any]) -> None:
        """Replay one event of `streamer`'s streams into the job (see wire's doc)."""
        kind = event["kind"]
        recorder = self.job.recorder
        now = float(event.get("t", time.time()))
        if kind == "opened":
            cursor = Cursor.from_dict(event["cursor"])
            recorder.opened(cursor, now)
            self.registry.opened(streamer, cursor)
        elif kind == "advanced":
            recorder.advanced(Cursor.from_dict(event["cursor"]), int(event["in_flight"]), now)
        elif kind == "closed":
            recorder.closed(Cursor.from_dict(event["cursor"]))
        elif kind == "delivered":
            delivery = Delivery.from_dict(event["delivery"])
            rows = event.get("layout")
            recorder.record_delivery(delivery, RenderedLayout(rows) if rows else None, now)
            self.registry.delivered(streamer, delivery, now)
        elif kind == "header_rejected":
            recorder.header_rejected(int(event["epoch"]), [str(r) for r in event["reasons"]])
        elif kind == "rejects":
            rejects = [Reject(*map(str, r)) for r in event["rejects"]]
            self.job.config_control.planners.record_rejects(rejects)
        elif kind == "report":
            self.job.report_trainer(int(event["rank"]), dict(event["report"]))
        elif kind == "check_epoch":
            self.job.config_control.planners.check_epoch(int(event["epoch"]))
        else:
            raise ValueError(f"unknown event kind {kind!r}: {json.dumps(event)[:80]}")
