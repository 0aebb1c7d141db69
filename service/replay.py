"""A batch source that replays a fixed list of pre-filled batches through the Flight server.

It measures the transport alone (benchmarks: Flight vs a raw Arrow IPC socket, where
decoding images would otherwise dominate) and lets tests drive backpressure with a long
stream and no Ray. Rank r of world size w gets global batches r, r + w, r + 2w, ... of
an epoch of `batches_per_epoch`, global batch j being `batches[j % len(batches)]`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from service.job import Delivered, StreamTicket, TicketError


class ReplaySource:
    def __init__(self, batches: list[pa.RecordBatch], batches_per_epoch: int) -> None:
        if not batches:
            raise ValueError("ReplaySource needs at least one batch")
        self.batches = batches
        self.batches_per_epoch = batches_per_epoch
        self._lock = threading.Lock()
        self.produced: dict[tuple[int, int], int] = {}  # (rank, world_size) -> batches taken

    def stream_schema(self) -> pa.Schema:
        return self.batches[0].schema

    def describe(self) -> dict[str, Any]:
        metadata = {
            k.decode(): v.decode() for k, v in (self.stream_schema().metadata or {}).items()
        }
        return {"source": "replay", "batches_per_epoch": self.batches_per_epoch, **metadata}

    def open_rank_stream(self, ticket: StreamTicket) -> Iterator[Delivered]:
        if ticket.start_batch > self.batches_per_epoch:
            raise TicketError("start_batch", f"past the epoch's {self.batches_per_epoch} batches")
        return self._stream(ticket)

    def _stream(self, ticket: StreamTicket) -> Iterator[Delivered]:
        rank, world = ticket.rank, ticket.world_size
        per_rank = -(-self.batches_per_epoch // world)
        version = int((self.stream_schema().metadata or {}).get(b"config_version", b"0"))
        for k in range(ticket.start_batch, per_rank):
            j = k * world + rank
            with self._lock:
                key = (rank, world)
                self.produced[key] = self.produced.get(key, 0) + 1
            yield Delivered(
                self.batches[j % len(self.batches)],
                {
                    "epoch": ticket.epoch,
                    "batch": k,
                    "global_batch": j,
                    "rank": rank,
                    "world_size": world,
                    "config_version": version,
                },
            )
