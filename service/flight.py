"""The Arrow Flight server: streams each trainer rank its packed batches.

`do_get` takes the UTF-8 JSON ticket `{"rank": 0, "world_size": 2, "epoch": 0,
"start_batch": 0}` and streams that rank's batches of the epoch from `start_batch` on,
each with app_metadata `BatchMetadata` JSON `{"epoch", "batch", "global_batch", "rank",
"config_version"}` (batch = this rank's batch index k; reconnect with k + 1). The ticket
is `packer.contract.cursor.Cursor.to_ticket()`.
The stream schema is `packed_schema(patch_size, seq_len, config_version at stream
start)`, sent once; the config version of each batch travels in its app_metadata.

Backpressure: pyarrow's GeneratorStream asks the generator for the next batch only after
gRPC accepted the previous one, and gRPC accepts only what the client's flow-control
window allows, so a stalled client parks its stream's generator; behind it at most
`max_in_flight` fill tasks are pending (see service.job.streams). Every stream runs on its own
gRPC thread, so the other ranks keep streaming.

Discovery: `get_flight_info(FlightDescriptor.for_command(<ticket JSON>))` answers a
FlightInfo with one endpoint: the ticket, and the locations that serve it. With no
streamers the locations are empty (this server: do_get here); with `--streamers N` it
is the location of the rank's streamer (service.streamers), whose do_get takes the same
ticket, token and TLS. A trainer that follows the endpoint works with either; one
whose streamer is restarting gets FlightUnavailableError and asks again.

Trainers report their steps back with `do_action` of type `navit.report` (the body a
packer.contract.report.StepReport), so /stats and the dashboard show each rank's data
wait; list_actions lists it. A coordinator also takes its streamers' actions
(`actions`: type -> handler of the body, answering result bodies).

The server counts the bytes it hands to gRPC (`sent`, service.live_stats.SentBytes).

Every failure a client can cause is a one-line Flight error with a reason (the client
gets FlightServerError / FlightUnauthenticatedError / FlightUnavailableError), never a
Python traceback and never a server path: a bad ticket or report names its field, the
methods this service does not offer (do_put, do_exchange, other actions) say "not
supported", and an unexpected failure is logged here and reported in one line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from packer.contract.auth import AUTH_HEADER, bearer_headers, bearer_matches
from packer.contract.cursor import Cursor, TicketError
from packer.contract.report import REPORT_ACTION, StepReport
from service.batch_source import (
    BatchSource,
    OutgoingBatch,
    ServedElsewhere,
    ServiceStopping,
    StreamerFailed,
)
from service.live_stats import SentBytes

log = logging.getLogger("navit.service.flight")

STREAM_PATH = [b"navit", b"packed"]
NOT_SUPPORTED = (
    f"not supported: this service streams with do_get (see list_flights) and takes "
    f"{REPORT_ACTION} actions"
)
# A client sees at most this much of an error message.
_MESSAGE_CHARS = 300


def one_line(message: str) -> str:
    """`message` on one line, at most _MESSAGE_CHARS long (a ticket may echo a long value)."""
    text = " ".join(message.split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _internal_error(what: str, error: Exception) -> flight.FlightServerError:
    """Log `error` with its traceback here; the client gets one line without it."""
    log.error("%s failed", what, exc_info=error)
    return flight.FlightServerError(
        one_line(f"{what} failed on the server ({type(error).__name__}); see the service log")
    )


class BearerTokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call without the header `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def start_call(self, info: flight.CallInfo, headers: dict[str, list]) -> None:
        for value in headers.get(AUTH_HEADER, []):
            if bearer_matches(value if isinstance(value, bytes) else str(value), self._token):
                return None  # authorised; nothing to attach to the call
        raise flight.FlightUnauthenticatedError(
            "missing or wrong bearer token: send the header 'authorization: Bearer <token>'"
        )


def bearer_call_options(token: str | None) -> flight.FlightCallOptions:
    """Client-side call options that carry the bearer token (for tests and tools)."""
    headers = [(key.encode(), value.encode()) for key, value in bearer_headers(token).items()]
    return flight.FlightCallOptions(headers=headers)


# An extra action: its body -> its results (bytes or pa.Buffer: flight.Result takes both).
ActionHandler = Callable[[bytes], Iterable[bytes | pa.Buffer]]


def _pem(value: str | Path | bytes | None) -> bytes:
    """A PEM given as its bytes (a streamer gets them from the coordinator) or a file."""
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()  # type: ignore[arg-type]


class PackedFlightServer(flight.FlightServerBase):
    def __init__(
        self,
        source: BatchSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        tls_cert: str | Path | bytes | None = None,
        tls_key: str | Path | bytes | None = None,
        actions: Mapping[str, ActionHandler] | None = None,
        sent: SentBytes | None = None,
    ) -> None:
        self.source = source
        self.actions = dict(actions or {})
        self.sent = sent if sent is not None else SentBytes()
        if tls_cert is not None:
            location = flight.Location.for_grpc_tls(host, port)
            certificates = [flight.CertKeyPair(cert=_pem(tls_cert), key=_pem(tls_key))]
        else:
            location = flight.Location.for_grpc_tcp(host, port)
            certificates = None
        middleware = {"auth": BearerTokenMiddlewareFactory(token)} if token else None
        try:
            super().__init__(location, tls_certificates=certificates, middleware=middleware)
        except pa.ArrowException as error:
            # pyarrow says only "Server did not start properly" (gRPC logs the reason).
            raise OSError(
                f"the Flight server cannot listen on {host}:{port} ({error}): the port is "
                "taken, the address is not this machine's, or the TLS pair is unusable"
            ) from None

    # -- streams -----------------------------------------------------------------------

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        try:
            cursor = Cursor.from_ticket(ticket.ticket)
            stream = self.source.open_rank_stream(cursor)
            schema = self.source.stream_schema()
        except TicketError as e:
            raise flight.FlightServerError(one_line(f"bad ticket: {e}")) from None
        except ServiceStopping as e:
            raise flight.FlightUnavailableError(
                one_line(f"{e}; reconnect with your cursor")
            ) from None
        except ServedElsewhere as e:
            raise flight.FlightServerError(one_line(str(e))) from None
        except Exception as e:  # noqa: BLE001 - one line to the client, the traceback to the log
            raise _internal_error("do_get", e) from None
        return flight.GeneratorStream(schema, _with_flight_errors(stream, cursor, self.sent))

    def list_flights(
        self, context: flight.ServerCallContext, criteria: bytes
    ) -> Iterator[flight.FlightInfo]:
        yield self._answer("list_flights", flight.FlightDescriptor.for_path(*STREAM_PATH), None)

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        return self._answer("get_flight_info", descriptor, self._described_cursor(descriptor))

    def _answer(
        self, what: str, descriptor: flight.FlightDescriptor, cursor: Cursor | None
    ) -> flight.FlightInfo:
        """`_info`, its failures as one-line Flight errors, its bytes counted."""
        try:
            info = self._info(descriptor, cursor)
        except TicketError as e:
            raise flight.FlightServerError(one_line(f"bad ticket in descriptor: {e}")) from None
        except ServiceStopping as e:
            raise flight.FlightUnavailableError(one_line(f"{e}; ask again")) from None
        except StreamerFailed as e:
            raise flight.FlightServerError(one_line(str(e))) from None
        except Exception as e:  # noqa: BLE001 - one line to the client
            raise _internal_error(what, e) from None
        self.sent.add(len(info.serialize()))
        return info

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        """The stream schema, whatever the descriptor: every flight of this service has
        it. (It never refuses: pyarrow's get_schema callback passes any exception,
        FlightError included, to the client with a Python traceback.)"""
        result = flight.SchemaResult(self.source.stream_schema())
        self.sent.add(len(result.serialize()))
        return result

    def _described_cursor(self, descriptor: flight.FlightDescriptor) -> Cursor | None:
        """The rank a descriptor names (a command is a ticket), None for the stream path;
        any other descriptor is a one-line FlightServerError."""
        if descriptor.descriptor_type == flight.DescriptorType.CMD:
            try:
                return Cursor.from_ticket(descriptor.command)
            except TicketError as e:
                raise flight.FlightServerError(one_line(f"bad ticket in descriptor: {e}")) from None
        if list(descriptor.path or []) != STREAM_PATH:
            raise flight.FlightServerError(
                one_line(
                    f"unknown flight {descriptor.path!r}: the only path is "
                    f"{[p.decode() for p in STREAM_PATH]}; or pass a ticket JSON as a command"
                )
            )
        return None

    # -- what this service does not offer ----------------------------------------------

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        raise flight.FlightServerError(NOT_SUPPORTED)

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        raise flight.FlightServerError(NOT_SUPPORTED)

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator:
        handler = self.actions.get(action.type)
        if handler is not None:
            return self._extra_action(action.type, handler, action.body.to_pybytes())
        if action.type != REPORT_ACTION:
            raise flight.FlightServerError(NOT_SUPPORTED)
        try:
            report = StepReport.from_bytes(action.body.to_pybytes())
        except ValueError as e:
            raise flight.FlightServerError(one_line(f"bad report: {e}")) from None
        try:
            self.source.report_trainer(report.rank, report.fields_for_the_service())
        except Exception as e:  # noqa: BLE001 - one line to the client
            raise _internal_error("do_action", e) from None
        self.sent.add(2)
        return iter([flight.Result(b"ok")])

    def _extra_action(self, kind: str, handler: ActionHandler, body: bytes) -> Iterator:
        try:
            results = list(handler(body))
        except ValueError as e:  # a malformed body: its reason, in one line
            raise flight.FlightServerError(one_line(f"bad {kind}: {e}")) from None
        except Exception as e:  # noqa: BLE001 - one line to the client
            raise _internal_error(kind, e) from None
        self.sent.add(sum(len(r) for r in results))
        return iter([flight.Result(r) for r in results])

    def list_actions(self, context: flight.ServerCallContext) -> list:
        return [
            (REPORT_ACTION, "a trainer rank's step report (packer.contract.report)"),
            *[(kind, "for this job's streamers only") for kind in self.actions],
        ]

    def _info(
        self, descriptor: flight.FlightDescriptor, cursor: Cursor | None
    ) -> flight.FlightInfo:
        example = cursor or Cursor(rank=0, world_size=1)
        locations = self.source.locate(example)
        endpoint = flight.FlightEndpoint(example.to_ticket(), locations)
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


def _with_flight_errors(
    stream: Iterator[OutgoingBatch], cursor: Cursor, sent: SentBytes
) -> Iterator[tuple]:
    """Yield (record_batch, app_metadata) pairs; turn failures into Flight errors."""
    try:
        for batch in stream:
            metadata = batch.metadata.to_bytes()
            sent.add(batch.record_batch.nbytes + len(metadata))
            yield batch.record_batch, metadata
    except ServiceStopping as e:
        raise flight.FlightUnavailableError(one_line(f"{e}; reconnect with your cursor")) from None
    except flight.FlightError:
        raise
    except Exception as e:
        # The message may hold a server path (an OSError's filename): the log gets it, the
        # client one line without it.
        log.exception("stream %s failed", cursor)
        raise flight.FlightServerError(
            f"stream of rank {cursor.rank} epoch {cursor.epoch} failed on the server "
            f"({type(e).__name__}; see the service log); reconnect with your cursor"
        ) from None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # ends the job's stream now, not whenever it is garbage-collected
