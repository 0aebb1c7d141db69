"""Packed batches for one trainer rank: from a folder of Arrow files or an Arrow Flight stream.

`iter_batches` yields `(cursor, PackedBatch)` where cursor = (epoch, k) and k counts this
rank's batches within the epoch. A checkpoint stores the cursor after the last trained
batch, (epoch, k + 1), and `iter_batches(..., epoch=epoch, start_batch=k + 1)` continues
there with no batch lost or repeated. Epochs follow each other (epoch + 1, batch 0) until
`end_epoch` (None = forever).

Sources:

* a folder written by `navit pack`: DIR/epoch-{e:03d}/batch-{j:06d}.arrow, one record
  batch per file, j the global batch index. Rank r of W reads j = k*W + r for
  k = 0 .. ceil(B/W) - 1 where B is the epoch's batch count; when j >= B it gets an
  all-padding batch, so every rank sees the same number of batches and DDP never waits
  on a rank that ran out. Epoch e reads epoch-{e mod E} where E is the number of epoch
  folders, so a folder packed with only epoch-000 is replayed every epoch (same images,
  same order). A folder of batch-*.arrow files without epoch folders is one epoch.
* `grpc://host:port` or `grpc+tls://host:port`: Arrow Flight `do_get` with the ticket
  UTF-8 JSON {"rank": r, "world_size": W, "epoch": e, "start_batch": k} and, when a token
  is given, the header `authorization: Bearer <token>`. Each chunk may carry app_metadata,
  JSON with "epoch", "batch" (this rank's k, the same count as start_batch) and
  "config_version"; the cursor comes from it when present. When a stream ends the client
  asks for the next epoch from batch 0; an empty stream at batch 0 ends the iteration.

A background thread reads ahead `prefetch` batches (a bounded queue), so file reads and
network waits overlap the training step. `to_device` turns a batch into torch tensors
without copying on CPU, or through pinned memory with non-blocking copies on CUDA.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from packer.contract.schema import PackedBatch, from_record_batch

Cursor = tuple[int, int]  # (epoch, batch index of this rank within the epoch)

FLIGHT_SCHEMES = ("grpc://", "grpc+tls://", "grpc+tcp://", "grpc+unix://")

_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_BATCH_FILE = re.compile(r"^batch-(\d+)\.arrow$")


def is_flight_source(source: str | os.PathLike[str]) -> bool:
    return str(source).startswith(FLIGHT_SCHEMES)


def iter_batches(
    source: str | os.PathLike[str],
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    start_batch: int = 0,
    token: str | None = None,
    prefetch: int = 2,
    end_epoch: int | None = None,
) -> Generator[tuple[Cursor, PackedBatch], None, None]:
    """(cursor, batch) pairs for `rank` of `world_size`, from the cursor (epoch, start_batch).

    `prefetch` batches are read ahead by a background thread (0: read on demand).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if epoch < 0 or start_batch < 0:
        raise ValueError(f"cursor must be non-negative, got epoch={epoch} batch={start_batch}")
    if is_flight_source(source):
        batches = _iter_flight(str(source), rank, world_size, epoch, start_batch, token, end_epoch)
    else:
        folder = PackedFolder(Path(source))
        batches = folder.iter_rank(rank, world_size, epoch, start_batch, end_epoch)
    return prefetch_in_thread(batches, prefetch) if prefetch > 0 else batches


# ---------------------------------------------------------------------------------------
# Folder of Arrow IPC files


def read_arrow_file(path: str | os.PathLike[str]) -> PackedBatch:
    """One `*.arrow` file (IPC file or stream format) as a PackedBatch.

    The file is read into memory here (not memory-mapped) so that the disk reads happen
    in the prefetch thread rather than as page faults inside the training step; the
    numpy arrays then view those Arrow buffers without another copy.
    """
    with pa.OSFile(str(path), "rb") as handle:
        data = handle.read_buffer()
    try:
        reader = pa.ipc.open_file(data)
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except pa.ArrowInvalid:  # written with the streaming format
        batches = list(pa.ipc.open_stream(data))
    if not batches:
        raise ValueError(f"{path}: no record batch in file")
    if len(batches) == 1:
        return from_record_batch(batches[0])
    return from_record_batch(pa.Table.from_batches(batches))


class PackedFolder:
    """A folder written by `navit pack`, split among ranks with padding batches."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"packed batch folder not found: {root}")
        self.root = root
        epochs = sorted(
            (int(m.group(1)), child)
            for child in root.iterdir()
            if child.is_dir() and (m := _EPOCH_DIR.match(child.name))
        )
        if epochs:
            numbers = [number for number, _ in epochs]
            if numbers != list(range(len(numbers))):
                raise ValueError(f"{root}: epoch folders must be epoch-000.. in order, {numbers}")
            self.epoch_dirs = [path for _, path in epochs]
        elif any(_BATCH_FILE.match(child.name) for child in root.iterdir()):
            self.epoch_dirs = [root]  # a flat folder is a single epoch
        else:
            raise FileNotFoundError(f"{root}: no epoch-NNN folders and no batch-*.arrow files")
        self._empty_shape: dict[Path, tuple[int, int, int]] = {}

    def batch_files(self, epoch: int) -> list[Path]:
        """The global batch files of `epoch`, in batch order (epoch wraps, see module doc)."""
        directory = self.epoch_dirs[epoch % len(self.epoch_dirs)]
        indexed = sorted(
            (int(m.group(1)), child)
            for child in directory.iterdir()
            if (m := _BATCH_FILE.match(child.name))
        )
        numbers = [number for number, _ in indexed]
        if numbers != list(range(len(numbers))):
            missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
            raise ValueError(f"{directory}: batch files missing: {missing[:10]}")
        return [path for _, path in indexed]

    def batches_per_rank(self, epoch: int, world_size: int) -> int:
        return -(-len(self.batch_files(epoch)) // world_size)  # ceil(B / W)

    def empty_batch(self, files: list[Path]) -> PackedBatch:
        """An all-padding batch shaped like the epoch's batches (rows, seq_len, patch)."""
        key = files[0]
        if key not in self._empty_shape:
            first = read_arrow_file(key)
            self._empty_shape[key] = (first.num_sequences, first.seq_len, first.patch_size)
        return PackedBatch.empty(*self._empty_shape[key])

    def iter_rank(
        self,
        rank: int,
        world_size: int,
        epoch: int = 0,
        start_batch: int = 0,
        end_epoch: int | None = None,
    ) -> Generator[tuple[Cursor, PackedBatch], None, None]:
        while end_epoch is None or epoch < end_epoch:
            files = self.batch_files(epoch)
            if not files:
                raise ValueError(f"{self.root}: epoch {epoch} has no batch files")
            for k in range(start_batch, -(-len(files) // world_size)):
                j = k * world_size + rank  # global batch index
                batch = read_arrow_file(files[j]) if j < len(files) else self.empty_batch(files)
                yield (epoch, k), batch
            epoch, start_batch = epoch + 1, 0


# ---------------------------------------------------------------------------------------
# Arrow Flight


def flight_ticket(rank: int, world_size: int, epoch: int, start_batch: int) -> bytes:
    """The do_get ticket of the packer service, e.g. b'{"rank": 0, "world_size": 2, ...}'."""
    ticket = {"rank": rank, "world_size": world_size, "epoch": epoch, "start_batch": start_batch}
    return json.dumps(ticket).encode()


def _iter_flight(
    location: str,
    rank: int,
    world_size: int,
    epoch: int,
    start_batch: int,
    token: str | None,
    end_epoch: int | None,
) -> Generator[tuple[Cursor, PackedBatch], None, None]:
    from pyarrow import flight

    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    options = flight.FlightCallOptions(headers=headers)
    # Packed batches are several MB each: 16 MB HTTP/2 frames cut the per-frame overhead
    # of the Flight client (about +50% throughput in bench/bench_service.py).
    client = flight.FlightClient(
        location, generic_options=[("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1)]
    )
    try:
        while end_epoch is None or epoch < end_epoch:
            ticket = flight.Ticket(flight_ticket(rank, world_size, epoch, start_batch))
            reader = client.do_get(ticket, options)
            received = 0
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    break
                if chunk.data is None:  # a metadata-only message
                    continue
                metadata = _json_metadata(chunk.app_metadata)
                epoch = int(metadata.get("epoch", epoch))
                start_batch = int(metadata.get("batch", start_batch))
                if end_epoch is not None and epoch >= end_epoch:
                    return
                batch = from_record_batch(chunk.data)
                if "config_version" in metadata:
                    batch.config_version = int(metadata["config_version"])
                yield (epoch, start_batch), batch
                start_batch += 1
                received += 1
            if received == 0 and start_batch == 0:
                return  # the service has no batches for this epoch: the data has ended
            epoch, start_batch = epoch + 1, 0
    finally:
        client.close()


def _json_metadata(buffer: pa.Buffer | None) -> dict[str, Any]:
    if buffer is None or buffer.size == 0:
        return {}
    value = json.loads(buffer.to_pybytes())
    return value if isinstance(value, dict) else {}


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


def batch_arrays(batch: PackedBatch) -> dict[str, np.ndarray]:
    """The model inputs and labels of a batch, by name (numpy, no copy)."""
    return {
        "patches": batch.patches,
        "segment_ids": batch.segment_ids,
        "patch_rows": batch.patch_rows,
        "patch_cols": batch.patch_cols,
        "image_grid_h": batch.image_grid_h,
        "image_grid_w": batch.image_grid_w,
        "images_per_seq": batch.images_per_seq,
        "labels": batch.labels,
    }


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
        for name, array in batch_arrays(batch).items():
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if device.type == "cuda":
                tensor = tensor.pin_memory().to(device, non_blocking=True)
            elif device.type != "cpu":
                tensor = tensor.to(device)
            tensors[name] = tensor
    return tensors
