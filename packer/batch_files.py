"""The files of a packed folder: OUT/epoch-000/batch-000012.arrow, one Arrow IPC file per
packed batch, j the global batch index. `navit pack` (packer.pipeline, on Ray workers)
and the in-process packing of packer.fixed_resolution write them the same way; the
trainer reads them (trainer/data.py, `PackedFolder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from packer.contract.files import write_atomically


def batch_path(out_dir: Path, epoch: int, batch: int) -> Path:
    """Where a packed batch lives: OUT/epoch-000/batch-000012.arrow."""
    return out_dir / f"epoch-{epoch:03d}" / f"batch-{batch:06d}.arrow"


def write_ipc_file(sink: pa.NativeFile | BinaryIO, record_batch: pa.RecordBatch) -> None:
    """One batch as an Arrow IPC file: what `navit pack` writes and the service sends."""
    with pa.ipc.new_file(sink, record_batch.schema) as writer:
        writer.write_batch(record_batch)


def write_batch_file(path: Path, record_batch: pa.RecordBatch) -> None:
    """A batch file of a packed folder; a crash leaves no half-written one behind."""
    # Not durable: a batch file is regenerated exactly by packing again, and an fsync per
    # file would cost the pack its disk latency.
    write_atomically(path, lambda out: write_ipc_file(out, record_batch), durable=False)
