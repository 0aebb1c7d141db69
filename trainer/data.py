"""Packed batches for one trainer rank: from a folder of Arrow files or an Arrow Flight stream.

`iter_batches(source, cursor)` yields `(cursor_after, batch)` pairs: each batch with the
`Cursor` (packer/contract/cursor.py) that stands just AFTER it, which is what a
checkpoint stores and what `iter_batches` continues from, with no batch lost or repeated.
Rank 1 of 2 over an epoch of 5 global batches of 8 sequences, starting at Cursor(1, 2,
epoch=0, next_batch=1):

    yields (Cursor(1, 2, 0, 2), global batch 3)        # this rank's k = 1
           (Cursor(1, 2, 0, 3), sequences 4-7 of 4)    # k = 2: its half of the tail
           (Cursor(1, 2, 1, 1), epoch 1's global 1)    # k = 0 of the next epoch
           ...

so after training a batch the loop saves its cursor, and resuming from Cursor(1, 2, 0, 3)
goes straight to epoch 1. Epochs follow each other until `end_epoch` (None = forever).

Sources:

* a folder written by `navit pack` (its layout: packer/contract/packed_folder.py):
  DIR/epoch-{e:03d}/batch-{j:06d}.arrow, one record batch per file, j the global batch.
  Rank r of W reads its batches as the service deals them (packer.contract.rank_layout):
  its k-th batch is file k * W + r, except in the epoch's tail, whose sequences are
  shared out among the ranks, so every rank sees the same number of batches, DDP never
  waits on a rank that ran out, and no rank trains on a batch of padding. Epoch e reads epoch-{e mod E}
  where E is the number of epoch folders, so a folder packed with only epoch-000 is
  repeated every epoch (same images, same order). A folder of batch-*.arrow files without
  epoch folders is one epoch.
* `grpc://host:port` or `grpc+tls://host:port`: Arrow Flight, with the ticket
  `cursor.to_ticket()` and, when a token is given, the `bearer_headers(token)` on every
  call. The rank first asks where its stream is: `get_flight_info` with the ticket as a
  command descriptor answers an endpoint (the ticket, and the location of the server
  that streams it: one of the service's streamers, or none, meaning the service
  itself); `do_get` there. Each chunk may carry `BatchMetadata` as app_metadata; the
  cursor then comes from it (`cursor.after(metadata)`), else from counting. When a
  stream ends the client asks for the next epoch from batch 0; an empty stream at batch
  0 ends the iteration. A stream that breaks (its streamer restarting, the service
  restarting: FlightUnavailableError, FlightTimedOutError) is asked for again at the
  cursor after the last batch received, so nothing is lost or repeated, after waits of
  0.5, 1, 2, 4, 8 and then 10 s, up to RECONNECT_TRIES times in a row.

A background thread reads ahead `prefetch` batches (a bounded queue), so file reads and
network waits overlap the training step. `to_device` turns a batch into torch tensors
without copying on CPU, or through pinned memory with non-blocking copies on CUDA.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from packer.contract.auth import bearer_headers
from packer.contract.classes import read_class_names, schema_class_names
from packer.contract.cursor import BatchMetadata, Cursor
from packer.contract.packed_folder import batch_files, epoch_folders, read_batch_file
from packer.contract.rank_layout import TailShare, epoch_layout
from packer.contract.schema import PackedBatch, from_record_batch, sequences_of
from trainer.model import MODEL_INPUTS

FLIGHT_SCHEMES = ("grpc://", "grpc+tls://", "grpc+tcp://", "grpc+unix://")

# The tensors `to_device` makes: the model inputs, then the labels.
TENSOR_COLUMNS = (*MODEL_INPUTS, "labels")


def is_flight_source(source: str | os.PathLike[str]) -> bool:
    return str(source).startswith(FLIGHT_SCHEMES)


def source_class_names(
    source: str | os.PathLike[str], cursor: Cursor, token: str | None = None
) -> list[str] | None:
    """The class names the data carries (packer.contract.classes): a Flight stream's
    schema metadata, a packed folder's classes.json; None when it carries none."""
    if not is_flight_source(source):
        return read_class_names(Path(source))
    schema = source_schema(source, cursor, token)
    return schema_class_names(schema) if schema is not None else None


def source_schema(
    source: str | os.PathLike[str], cursor: Cursor, token: str | None = None
) -> pa.Schema | None:
    """The packed schema of a source (its metadata names patch_size and seq_len): a
    Flight stream's get_schema, a packed folder's first batch file; None from a Flight
    server that does not answer get_schema."""
    if not is_flight_source(source):
        folder = PackedFolder(Path(source))
        return _file_schema(folder.batch_files(0)[0])
    from pyarrow import flight

    client = flight.FlightClient(str(source))
    try:
        descriptor = flight.FlightDescriptor.for_command(cursor.to_ticket())
        return client.get_schema(descriptor, call_options(token)).schema
    except pa.ArrowNotImplementedError:
        return None  # a Flight server that is not navit's
    finally:
        client.close()


def call_options(token: str | None) -> Any:
    """Flight call options carrying the bearer token (none: no header)."""
    from pyarrow import flight

    headers = [(k.encode(), v.encode()) for k, v in bearer_headers(token).items()]
    return flight.FlightCallOptions(headers=headers)


def iter_batches(
    source: str | os.PathLike[str],
    cursor: Cursor,
    token: str | None = None,
    prefetch: int = 2,
    end_epoch: int | None = None,
) -> Generator[tuple[Cursor, PackedBatch], None, None]:
    """(cursor after the batch, batch) pairs of `cursor.rank`, from `cursor` on.

    `prefetch` batches are read ahead by a background thread (0: read on demand).
    """
    if is_flight_source(source):
        batches = _iter_flight(str(source), cursor, token, end_epoch)
    else:
        batches = PackedFolder(Path(source)).iter_rank(cursor, end_epoch)
    return prefetch_in_thread(batches, prefetch) if prefetch > 0 else batches


# ---------------------------------------------------------------------------------------
# Folder of Arrow IPC files


def read_arrow_file(path: str | os.PathLike[str]) -> PackedBatch:
    """One batch file of a packed folder (packer.contract.packed_folder) as a PackedBatch;
    the numpy arrays view the Arrow buffers read into memory, without another copy."""
    return from_record_batch(read_batch_file(path))


class PackedFolder:
    """A folder written by `navit pack`, split among ranks with padding batches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.epoch_dirs = epoch_folders(root)
        self._empty_shape: dict[Path, tuple[int, int, int]] = {}

    def batch_files(self, epoch: int) -> list[Path]:
        """The global batch files of `epoch`, in batch order (epoch wraps, see module doc)."""
        return batch_files(self.epoch_dirs[epoch % len(self.epoch_dirs)])

    def empty_batch(self, files: list[Path]) -> PackedBatch:
        """A filler batch: one all-padding sequence shaped like the epoch's (seq_len, patch)."""
        key = files[0]
        if key not in self._empty_shape:
            first = read_arrow_file(key)
            self._empty_shape[key] = (1, first.seq_len, first.patch_size)
        return PackedBatch.empty(*self._empty_shape[key])

    def iter_rank(
        self, cursor: Cursor, end_epoch: int | None = None
    ) -> Generator[tuple[Cursor, PackedBatch], None, None]:
        """(cursor after, batch) of `cursor.rank` from `cursor` on (see the module doc)."""
        while end_epoch is None or cursor.epoch < end_epoch:
            files = self.batch_files(cursor.epoch)
            if not files:
                raise ValueError(f"{self.root}: epoch {cursor.epoch} has no batch files")
            sequences_in = _row_counts(files)
            layout = epoch_layout(len(files), cursor.world_size, sequences_in)
            for k in range(cursor.next_batch, layout.batches_per_rank):
                where = layout.batch_of(cursor.rank, k)
                if isinstance(where, int):
                    batch = read_arrow_file(files[where])
                elif where.start == where.stop:
                    batch = self.empty_batch(files)
                else:  # a share of the epoch's tail (packer.contract.rank_layout)
                    batch = _tail_share(files, where, sequences_in)
                cursor = cursor.advanced()
                yield cursor, batch
            cursor = cursor.next_epoch()


def _num_rows(path: Path) -> int:
    """Sequences in a batch file, from its footer (memory-mapped: no batch is read)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).get_batch(0).num_rows


def _row_counts(files: list[Path]) -> Callable[[int], int]:
    """`sequences_in(j)`: the sequences of files[j], from its footer, read once."""
    rows: dict[int, int] = {}

    def sequences_in(j: int) -> int:
        if j not in rows:
            rows[j] = _num_rows(files[j])
        return rows[j]

    return sequences_in


def _file_schema(path: Path) -> pa.Schema:
    """The schema of a batch file, metadata included (memory-mapped: no batch is read)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).schema


def _tail_share(
    files: list[Path], share: TailShare, sequences_in: Callable[[int], int]
) -> PackedBatch:
    """Sequences [share.start, share.stop) of the tail zone (global batches
    share.zone_start on), reading only the zone's files that hold some of them."""
    zone: list[PackedBatch] = []
    offset = first = 0  # offset: zone sequences before the first file read
    for j in range(share.zone_start, len(files)):
        if first >= share.stop:
            break
        n = sequences_in(j)
        if first + n > share.start:
            if not zone:
                offset = first
            zone.append(read_arrow_file(files[j]))
        first += n
    if not zone:
        raise ValueError(f"no sequences in [{share.start}, {share.stop}) of {first}")
    return sequences_of(zone, share.start - offset, share.stop - offset)


# ---------------------------------------------------------------------------------------
# Arrow Flight


# A broken stream is asked for again this many times in a row (waits of 0.5, 1, 2, 4,
# 8, then 10 s: about two minutes, time for Ray to restart a streamer on a busy node or
# for a supervisor to restart the service) before the error reaches the training loop.
RECONNECT_TRIES = 16


def _reconnect_wait(failures: int) -> float:
    return min(0.5 * 2 ** (failures - 1), 10.0)


class FlightRoute:
    """A rank's way to its stream: ask `source` (the service) where the cursor's stream
    is, then do_get at the endpoint's location (none: `source` itself). One client per
    location, kept until `close`.

        route = FlightRoute("grpc://packer:8815", token)
        reader = route.open(Cursor(3, 8, epoch=0, next_batch=5))
    """

    def __init__(self, source: str, token: str | None) -> None:
        self.source = source
        self._options = call_options(token)
        self._clients: dict[str, Any] = {}

    def client(self, location: str) -> Any:
        from pyarrow import flight

        if location not in self._clients:
            # Packed batches are several MB each: 16 MB HTTP/2 frames cut the per-frame
            # overhead of the Flight client (measured in bench/bench_service.py).
            self._clients[location] = flight.FlightClient(
                location, generic_options=[("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1)]
            )
        return self._clients[location]

    def locate(self, cursor: Cursor) -> tuple[str, bytes]:
        """(the location that streams `cursor`, the ticket to give it)."""
        from pyarrow import flight

        descriptor = flight.FlightDescriptor.for_command(cursor.to_ticket())
        try:
            info = self.client(self.source).get_flight_info(descriptor, self._options)
        except pa.ArrowNotImplementedError:
            return self.source, cursor.to_ticket()  # a Flight server with no discovery
        endpoint = info.endpoints[0]
        if not endpoint.locations:
            return self.source, endpoint.ticket.ticket
        return endpoint.locations[0].uri.decode(), endpoint.ticket.ticket

    def open(self, cursor: Cursor) -> Any:
        """A reader of `cursor`'s stream, wherever it is served."""
        from pyarrow import flight

        location, ticket = self.locate(cursor)
        return self.client(location).do_get(flight.Ticket(ticket), self._options)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _iter_flight(
    location: str, cursor: Cursor, token: str | None, end_epoch: int | None
) -> Generator[tuple[Cursor, PackedBatch], None, None]:
    from pyarrow import flight

    route = FlightRoute(location, token)
    broken = (flight.FlightUnavailableError, flight.FlightTimedOutError)
    try:
        while end_epoch is None or cursor.epoch < end_epoch:
            received = failures = 0
            while True:
                try:
                    reader = route.open(cursor)
                    while True:
                        try:
                            chunk = reader.read_chunk()
                        except StopIteration:
                            break
                        if chunk.data is None:  # a metadata-only message
                            continue
                        metadata = _batch_metadata(chunk.app_metadata)
                        if (
                            metadata is not None
                            and end_epoch is not None
                            and metadata.epoch >= end_epoch
                        ):
                            return
                        batch = from_record_batch(chunk.data)
                        if metadata is None:
                            cursor = cursor.advanced()
                        else:
                            cursor = cursor.after(metadata)
                            batch.config_version = metadata.config_version
                        received += 1
                        failures = 0
                        yield cursor, batch
                    break
                except broken:
                    failures += 1
                    if failures > RECONNECT_TRIES:
                        raise
                    time.sleep(_reconnect_wait(failures))
            if received == 0 and cursor.next_batch == 0:
                return  # the service has no batches for this epoch: the data has ended
            cursor = cursor.next_epoch()
    finally:
        route.close()


def _batch_metadata(buffer: pa.Buffer | None) -> BatchMetadata | None:
    if buffer is None or buffer.size == 0:
        return None
    return BatchMetadata.from_bytes(buffer.to_pybytes())


# ---------------------------------------------------------------------------------------
# Prefetch thread


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetch_in_thread(items: Iterator[Any], depth: int) -> Generator[Any, None, None]:
    """Run `items` in a daemon thread, at most `depth` items ahead; errors re-raise here.

    Closing the returned generator (or dropping it) stops the thread and closes `items`.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(_Failure(error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="navit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------------
# To torch


def to_device(batch: PackedBatch, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Tensors of a batch on `device`: zero-copy views on CPU; pinned + non_blocking on CUDA.

    On CPU the tensors share memory with the Arrow buffers, which are read-only: the model
    only reads them (it converts patches to float into a new tensor).
    """
    device = torch.device(device)
    tensors = {}
    with warnings.catch_warnings():
        # Arrow buffers are immutable, so numpy marks them read-only; nothing writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name in TENSOR_COLUMNS:
            tensor = torch.from_numpy(np.ascontiguousarray(getattr(batch, name)))
            if device.type == "cuda":
                tensor = tensor.pin_memory().to(device, non_blocking=True)
            elif device.type != "cpu":
                tensor = tensor.to(device)
            tensors[name] = tensor
    return tensors
