"""What the Flight server streams from: a source of each rank's outgoing batches.

Two sources exist: the packing job (`service.job.ServiceJob`, batches planned and filled
on demand) and `service.fixed_batches.FixedBatchSource` (a fixed list of batches, for benchmarks
and transport tests). Both hand the transport `OutgoingBatch`es. The Flight server
imports only this module and the contract, never the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from packer.contract.cursor import BatchMetadata, Cursor


@dataclass(frozen=True)
class OutgoingBatch:
    """A filled batch ready for the transport, with the metadata that travels with it."""

    record_batch: pa.RecordBatch
    metadata: BatchMetadata


class ServiceStopping(Exception):
    """The service is shutting down; a trainer should reconnect with its cursor."""


class StreamerUnavailable(ServiceStopping):
    """The rank's streamer is not up now (starting or restarting): ask again soon."""


class StreamerFailed(Exception):
    """The rank's streamer is down for good (it could not start, or Ray gave up
    restarting it): asking again will not help."""


class ServedElsewhere(Exception):
    """This server does not serve the rank's stream: another Flight server does, which
    get_flight_info names (the message says so)."""


class BatchSource(Protocol):
    """A source of rank streams. `open_rank_stream` raises TicketError for a cursor it
    cannot serve, ServedElsewhere where another server streams it and ServiceStopping
    once the service is stopping; the stream itself may raise ServiceStopping between
    batches. `locate` names the Flight locations that serve a cursor's stream (an
    empty list: this server). `report_trainer` keeps a rank's step report
    (packer.contract.report)."""

    def stream_schema(self) -> pa.Schema: ...

    def describe(self) -> dict[str, Any]: ...

    def open_rank_stream(self, cursor: Cursor) -> Iterator[OutgoingBatch]: ...

    def locate(self, cursor: Cursor) -> list[str]: ...

    def report_trainer(self, rank: int, report: dict[str, Any]) -> dict[str, Any]: ...
