"""Helpers for the service tests: tickets, reading a rank's stream, the small config, and
a fill without Ray for driving a job's rank streams in-process."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from packer.config import PackingConfig
from packer.contract.schema import from_record_batch, to_record_batch
from packer.fill.batch import fill_batch
from packer.fill.bounded import in_order
from packer.image.notes import ImageNote
from packer.image.reject import Reject
from packer.plan.batch_plan import BatchPlan
from service.flight import bearer_call_options

# Small enough that an epoch of 48 sample images is a few seconds on 2 cores, and gives
# about ten one-sequence batches, so a stream can be cut in the middle.
SMALL_CONFIG = PackingConfig(
    patch_size=16, seq_len=128, min_res=32, max_res=96, batch_size=1, pack_window=16
)


def ticket(rank: int, world_size: int, epoch: int, start_batch: int = 0) -> flight.Ticket:
    body = {"rank": rank, "world_size": world_size, "epoch": epoch, "start_batch": start_batch}
    return flight.Ticket(json.dumps(body).encode())


@dataclass
class Received:
    metadata: dict  # the batch's app_metadata
    schema_metadata: dict[str, str]
    image_ids: list[str]
    images_per_seq: list[int]
    num_rows: int
    wire: bytes  # the batch's Arrow IPC message and its app_metadata, as sent


def received(chunk: flight.FlightStreamChunk) -> Received:
    batch: pa.RecordBatch = chunk.data
    packed = from_record_batch(batch)
    app_metadata = chunk.app_metadata.to_pybytes()
    return Received(
        metadata=json.loads(app_metadata),
        schema_metadata={k.decode(): v.decode() for k, v in batch.schema.metadata.items()},
        image_ids=list(packed.image_ids),
        images_per_seq=packed.images_per_seq.tolist(),
        num_rows=batch.num_rows,
        wire=batch.serialize().to_pybytes() + app_metadata,
    )


def connect(location: str, tls_root: bytes | None = None) -> flight.FlightClient:
    if tls_root is not None:
        return flight.FlightClient(location, tls_root_certs=tls_root)
    return flight.FlightClient(location)


def read_stream(
    location: str,
    rank: int,
    world_size: int,
    epoch: int,
    start_batch: int = 0,
    *,
    token: str | None = None,
    limit: int | None = None,
) -> list[Received]:
    """Read a rank's stream to its end, or only `limit` batches and then hang up."""
    client = connect(location)
    try:
        reader = client.do_get(
            ticket(rank, world_size, epoch, start_batch), bearer_call_options(token)
        )
        out: list[Received] = []
        while limit is None or len(out) < limit:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            out.append(received(chunk))
        if limit is not None:
            reader.cancel()  # the trainer drops mid-epoch
        return out
    finally:
        client.close()


def read_endpoint_stream(
    coordinator: str,
    rank: int,
    world_size: int,
    epoch: int,
    start_batch: int = 0,
    *,
    token: str | None = None,
    tls_root: bytes | None = None,
    limit: int | None = None,
) -> tuple[str, list[Received]]:
    """As a plain pyarrow Flight client: ask `coordinator` where the rank's stream is
    (get_flight_info with the ticket as a command), then read the endpoint's ticket at its
    location to the end (or only `limit` batches). Returns (the location, the batches)."""
    options = bearer_call_options(token)
    client = connect(coordinator, tls_root)
    try:
        descriptor = flight.FlightDescriptor.for_command(
            ticket(rank, world_size, epoch, start_batch).ticket
        )
        (endpoint,) = client.get_flight_info(descriptor, options).endpoints
    finally:
        client.close()
    (location,) = endpoint.locations
    streamer = connect(location.uri.decode(), tls_root)
    try:
        reader = streamer.do_get(endpoint.ticket, options)
        out: list[Received] = []
        while limit is None or len(out) < limit:
            try:
                out.append(received(reader.read_chunk()))
            except StopIteration:
                break
        if limit is not None:
            reader.cancel()
        return location.uri.decode(), out
    finally:
        streamer.close()


def image_ids(batches: list[Received]) -> list[str]:
    return [i for b in batches for i in b.image_ids]


def valid_image_ids(index: pa.Table) -> list[str]:
    ids = index.column("image_id").to_pylist()
    errors = index.column("error").to_pylist()
    return sorted(i for i, e in zip(ids, errors, strict=True) if e is None)


@dataclass
class FilledInProcess:
    """What `packer.pipeline.stream_filled` yields (a FilledBatch's fields), filled here."""

    epoch: int
    global_batch: int
    config_version: int
    packed: pa.RecordBatch
    rejected: list[Reject]
    notes: list[ImageNote] = field(default_factory=list)

    def record_batch(self) -> pa.RecordBatch:
        return self.packed


@dataclass
class InProcessFill:
    """A stand-in for `stream_filled` without Ray, with its bound (the same loop,
    packer.fill.bounded.in_order): it takes plans only while fewer than `max_in_flight`
    are pending, and fills one when its consumer asks for the next batch. `plans_taken`
    counts the plans it pulled."""

    plans_taken: int = 0
    seen_max_in_flight: list[int] = field(default_factory=list)

    def __call__(self, plans: Iterable[BatchPlan], max_in_flight: int) -> Iterator:
        self.seen_max_in_flight.append(max_in_flight)
        return in_order(plans, self._take, self._fill, max_in_flight)

    def _take(self, plan: BatchPlan) -> BatchPlan:
        self.plans_taken += 1
        return plan

    @staticmethod
    def _fill(plan: BatchPlan) -> FilledInProcess:
        result = fill_batch(plan)
        return FilledInProcess(
            plan.epoch,
            plan.global_batch,
            plan.config_version,
            to_record_batch(result.packed),
            result.rejected,
            result.notes,
        )


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
