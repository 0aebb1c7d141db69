"""The Arrow Flight server: streams each trainer rank its packed batches.

`do_get` takes the UTF-8 JSON ticket `{"rank": 0, "world_size": 2, "epoch": 0,
"start_batch": 0}` and streams that rank's batches of the epoch from `start_batch` on,
each with app_metadata JSON `{"epoch", "batch", "global_batch", "rank", "world_size",
"config_version"}` (batch = this rank's batch index k, the cursor to reconnect with).
The stream schema is `packed_schema(patch_size, seq_len, config_version at stream
start)`, sent once; the config version of each batch travels in its app_metadata.

Backpressure: pyarrow's GeneratorStream asks the generator for the next batch only after
gRPC accepted the previous one, and gRPC accepts only what the client's flow-control
window allows, so a stalled client parks its stream's generator; behind it at most
`max_in_flight` fill tasks are pending (see service.job). Every stream runs on its own
gRPC thread, so the other ranks keep streaming.

Bad tickets and refused calls raise Flight errors with a reason (the client gets
FlightServerError / FlightUnauthenticatedError), never crash the server.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from service.job import Delivered, ServiceStopping, StreamTicket, TicketError

log = logging.getLogger("navit.service.flight")

STREAM_PATH = [b"navit", b"packed"]


class BatchSource(Protocol):
    """What the Flight server streams from: the real job, or a benchmark's cached batches."""

    def stream_schema(self) -> pa.Schema: ...

    def describe(self) -> dict[str, Any]: ...

    def open_rank_stream(self, ticket: StreamTicket) -> Iterator[Delivered]: ...


class BearerTokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call without the header `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list]) -> None:
        for value in headers.get("authorization", []):
            raw = value if isinstance(value, bytes) else str(value).encode()
            if hmac.compare_digest(raw, self._expected):
                return None  # authorised; nothing to attach to the call
        raise flight.FlightUnauthenticatedError(
            "missing or wrong bearer token: send the header 'authorization: Bearer <token>'"
        )


def bearer_call_options(token: str | None) -> flight.FlightCallOptions:
    """Client-side call options that carry the bearer token (for tests and tools)."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers)


class PackedFlightServer(flight.FlightServerBase):
    def __init__(
        self,
        source: BatchSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.source = source
        self.tls = tls_cert is not None
        if self.tls:
            location = flight.Location.for_grpc_tls(host, port)
            certificates = [
                flight.CertKeyPair(cert=Path(tls_cert).read_bytes(), key=Path(tls_key).read_bytes())
            ]
        else:
            location = flight.Location.for_grpc_tcp(host, port)
            certificates = None
        middleware = {"auth": BearerTokenMiddlewareFactory(token)} if token else None
        super().__init__(location, tls_certificates=certificates, middleware=middleware)
        self.host = host

    @property
    def location(self) -> str:
        scheme = "grpc+tls" if self.tls else "grpc+tcp"
        return f"{scheme}://{self.host}:{self.port}"

    # -- streams -----------------------------------------------------------------------

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        try:
            parsed = StreamTicket.parse(ticket.ticket)
            stream = self.source.open_rank_stream(parsed)
        except TicketError as e:
            raise flight.FlightServerError(f"bad ticket: {e}") from None
        except ServiceStopping as e:
            raise flight.FlightUnavailableError(f"{e}; reconnect with your cursor") from None
        schema = self.source.stream_schema()
        return flight.GeneratorStream(schema, _with_flight_errors(stream, parsed))

    def list_flights(
        self, context: flight.ServerCallContext, criteria: bytes
    ) -> Iterator[flight.FlightInfo]:
        yield self._info(flight.FlightDescriptor.for_path(*STREAM_PATH), None)

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        if descriptor.descriptor_type == flight.DescriptorType.CMD:
            # A command is a ticket: describe that rank's stream.
            try:
                ticket = StreamTicket.parse(descriptor.command)
            except TicketError as e:
                raise flight.FlightServerError(f"bad ticket in descriptor: {e}") from None
            return self._info(descriptor, ticket)
        if list(descriptor.path or []) != STREAM_PATH:
            raise flight.FlightServerError(
                f"unknown flight {descriptor.path!r}: the only path is "
                f"{[p.decode() for p in STREAM_PATH]}; or pass a ticket JSON as a command"
            )
        return self._info(descriptor, None)

    def _info(
        self, descriptor: flight.FlightDescriptor, ticket: StreamTicket | None
    ) -> flight.FlightInfo:
        example = ticket or StreamTicket(rank=0, world_size=1, epoch=0, start_batch=0)
        endpoint = flight.FlightEndpoint(example.to_bytes(), [])
        description = {
            **self.source.describe(),
            "ticket": 'UTF-8 JSON {"rank", "world_size", "epoch", "start_batch"}',
        }
        return flight.FlightInfo(
            self.source.stream_schema(),
            descriptor,
            [endpoint],
            total_records=-1,
            total_bytes=-1,
            app_metadata=json.dumps(description).encode(),
        )


def _with_flight_errors(stream: Iterator[Delivered], ticket: StreamTicket) -> Iterator[tuple]:
    """Yield (record_batch, app_metadata) pairs; turn failures into Flight errors."""
    try:
        for delivered in stream:
            yield delivered.record_batch, delivered.metadata_bytes()
    except ServiceStopping as e:
        raise flight.FlightUnavailableError(f"{e}; reconnect with your cursor") from None
    except flight.FlightError:
        raise
    except Exception as e:
        log.exception("stream %s failed", ticket)
        raise flight.FlightServerError(
            f"stream of rank {ticket.rank} epoch {ticket.epoch} failed: {type(e).__name__}: "
            f"{e}; reconnect with your cursor"
        ) from None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # ends the job's stream now, not whenever it is garbage-collected
