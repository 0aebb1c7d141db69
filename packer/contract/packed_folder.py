"""The packed folder: what `navit pack` writes and a trainer reads, laid out once here.

    OUT/epoch-000/batch-000000.arrow    one Arrow IPC file per packed batch: global batch
    OUT/epoch-000/batch-000001.arrow    j of the epoch, one record batch in the file
    OUT/epoch-001/...
    OUT/classes.json                    the class names in label order (packer.contract.classes)
    OUT/stats.json, rejected.jsonl, notes.jsonl   what the pack reports (not read back)

Epoch folders are numbered from 000 without gaps, and so are an epoch's batch files: a
gap is an error naming what is missing, never a silently shorter epoch. A folder holding
batch files and no epoch folders is read as one epoch.

`navit pack` (packer.pipeline, on Ray workers) and the in-process packing
(packer.fill.in_process) write with `write_batch_file`; the trainer reads with
`epoch_folders`, `batch_files` and `read_batch_file` (trainer/data.py, `PackedFolder`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from packer.contract.files import write_atomically

_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_BATCH_FILE = re.compile(r"^batch-(\d+)\.arrow$")


def epoch_folder(out_dir: Path, epoch: int) -> Path:
    """OUT/epoch-003 for epoch 3."""
    return Path(out_dir) / f"epoch-{epoch:03d}"


def batch_path(out_dir: Path, epoch: int, global_batch: int) -> Path:
    """Where a packed batch lives: OUT/epoch-000/batch-000012.arrow for global batch 12."""
    return epoch_folder(out_dir, epoch) / f"batch-{global_batch:06d}.arrow"


def write_ipc_file(sink: pa.NativeFile | BinaryIO, record_batch: pa.RecordBatch) -> None:
    """One batch as an Arrow IPC file: what a batch file holds and a Ray worker returns."""
    with pa.ipc.new_file(sink, record_batch.schema) as writer:
        writer.write_batch(record_batch)


def write_batch_file(path: Path, record_batch: pa.RecordBatch) -> None:
    """A batch file of a packed folder; a crash leaves no half-written one behind."""
    # Not durable: a batch file is regenerated exactly by packing again, and an fsync per
    # file would cost the pack its disk latency.
    write_atomically(path, lambda out: write_ipc_file(out, record_batch), durable=False)


def read_batch_file(path: str | os.PathLike[str]) -> pa.RecordBatch:
    """The record batch of one batch file, read into memory (not memory-mapped), so the
    disk reads happen where this is called (a prefetch thread), not as page faults later."""
    with pa.OSFile(str(path), "rb") as handle:
        data = handle.read_buffer()
    reader = pa.ipc.open_file(data)
    if reader.num_record_batches != 1:
        raise ValueError(
            f"{path}: a batch file holds one record batch, found {reader.num_record_batches}"
        )
    return reader.get_batch(0)


def epoch_folders(root: Path) -> list[Path]:
    """The epoch folders of a packed folder in epoch order ([root] for a flat one).

    FileNotFoundError when `root` is no folder or holds no batches; ValueError when the
    epoch folders skip a number.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"packed batch folder not found: {root}")
    numbered = sorted(
        (int(m.group(1)), child)
        for child in root.iterdir()
        if child.is_dir() and (m := _EPOCH_DIR.match(child.name))
    )
    if numbered:
        numbers = [number for number, _ in numbered]
        if numbers != list(range(len(numbers))):
            raise ValueError(f"{root}: epoch folders must be epoch-000.. in order, {numbers}")
        return [path for _, path in numbered]
    if any(_BATCH_FILE.match(child.name) for child in root.iterdir()):
        return [root]
    raise FileNotFoundError(f"{root}: no epoch-NNN folders and no batch-*.arrow files")


def is_packed_folder(root: str | os.PathLike[str]) -> bool:
    """Whether `root` is a packed folder (epoch folders or batch files), not a data set."""
    try:
        epoch_folders(Path(root))
    except (OSError, ValueError):
        return False
    return True


def batch_files(epoch_dir: Path) -> list[Path]:
    """An epoch folder's batch files in global batch order; ValueError naming any gap."""
    numbered = sorted(
        (int(m.group(1)), child)
        for child in epoch_dir.iterdir()
        if (m := _BATCH_FILE.match(child.name))
    )
    numbers = [number for number, _ in numbered]
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
        raise ValueError(f"{epoch_dir}: batch files missing: {missing[:10]}")
    return [path for _, path in numbered]


def remove_batch_files(epoch_dir: Path) -> None:
    """Delete an epoch folder's batch files (an earlier pack's), gaps or not."""
    if epoch_dir.is_dir():
        for child in epoch_dir.iterdir():
            if _BATCH_FILE.match(child.name):
                child.unlink()
