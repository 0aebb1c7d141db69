"""A batch source that streams a fixed list of pre-filled batches through the Flight server.

It measures the transport alone (benchmarks: Flight vs a raw Arrow IPC socket, where
decoding images would otherwise dominate) and lets tests drive backpressure with a long
stream and no Ray. Rank r of world size w gets global batches r, r + w, r + 2w, ... of
an epoch of `batches_per_epoch` (`global_batch_index`), global batch j being
`batches[j % len(batches)]`; like the job, every rank gets `batches_per_rank` of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from packer.contract.cursor import BatchMetadata, Cursor, TicketError
from packer.contract.rank_layout import batches_per_rank, global_batch_index
from service.batch_source import OutgoingBatch


class FixedBatchSource:
    def __init__(self, batches: list[pa.RecordBatch], batches_per_epoch: int) -> None:
        if not batches:
            raise ValueError("FixedBatchSource needs at least one batch")
        self.batches = batches
        self.batches_per_epoch = batches_per_epoch
        self._lock = threading.Lock()
        self.produced: dict[tuple[int, int], int] = {}  # (rank, world_size) -> batches taken
        self.reports: dict[int, dict[str, Any]] = {}  # rank -> its latest step report

    def stream_schema(self) -> pa.Schema:
        return self.batches[0].schema

    def describe(self) -> dict[str, Any]:
        metadata = {
            k.decode(): v.decode() for k, v in (self.stream_schema().metadata or {}).items()
        }
        return {"source": "fixed_batches", "batches_per_epoch": self.batches_per_epoch, **metadata}

    def report_trainer(self, rank: int, report: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.reports[rank] = report
        return report

    def locate(self, cursor: Cursor) -> list[str]:
        return []  # every stream is served here

    def open_rank_stream(self, cursor: Cursor) -> Iterator[OutgoingBatch]:
        if cursor.next_batch > self.batches_per_epoch:
            raise TicketError("start_batch", f"past the epoch's {self.batches_per_epoch} batches")
        return self._stream(cursor)

    def _stream(self, cursor: Cursor) -> Iterator[OutgoingBatch]:
        rank, world = cursor.rank, cursor.world_size
        version = int((self.stream_schema().metadata or {}).get(b"config_version", b"0"))
        for k in range(cursor.next_batch, batches_per_rank(self.batches_per_epoch, world)):
            j = global_batch_index(rank, world, k)
            with self._lock:
                key = (rank, world)
                self.produced[key] = self.produced.get(key, 0) + 1
            metadata = BatchMetadata(
                epoch=cursor.epoch, batch=k, global_batch=j, rank=rank, config_version=version
            )
            yield OutgoingBatch(self.batches[j % len(self.batches)], metadata)
