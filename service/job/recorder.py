"""`JobRecorder`: what the job's rank streams did, kept where the control plane reads it.

Every rank stream tells its events (service.job.streams.StreamEvents): a stream opened,
an epoch's header rejects, a batch delivered, the rank's cursor moved, a stream closed.
The recorder keeps them in the job's three records: each rank's cursor (RankCursors,
saved in the state store), the live statistics (LiveStats) and the layouts sent lately
(RecentLayouts). The streams of this process call it directly; a streamer's streams
call a forwarder in their own process, and the coordinator replays what arrives into
this same recorder (`record_delivery` for a batch worked out there), so /stats is whole
either way.
"""

from __future__ import annotations

import time

from packer.contract.cursor import BatchMetadata, Cursor
from packer.contract.schema import PackedBatch
from service.job.layouts import Layout, RecentLayouts, SentLayout
from service.job.rank_cursors import RankCursors
from service.live_stats import Delivery, LiveStats


class JobRecorder:
    """Records rank stream events in the job's cursors, statistics and layouts."""

    def __init__(self, cursors: RankCursors, stats: LiveStats, recent: RecentLayouts) -> None:
        self.cursors = cursors
        self.stats = stats
        self.recent = recent

    def opened(self, cursor: Cursor, now: float | None = None) -> None:
        self.cursors.opened(cursor, now)

    def header_rejected(self, epoch: int, reasons: list[str]) -> None:
        self.stats.add_header_rejected(epoch, reasons)

    def delivered(self, metadata: BatchMetadata, packed: PackedBatch, delivery: Delivery) -> None:
        """A filled batch is handed to the transport (counted once it is, even if the
        trainer drops before reading it: a replay counts its throughput again)."""
        layout = SentLayout.of(metadata, packed) if packed.num_images else None
        self.record_delivery(delivery, layout)

    def record_delivery(
        self, delivery: Delivery, layout: Layout | None, now: float | None = None
    ) -> None:
        """Count a delivery and keep its layout (None: nothing to draw)."""
        self.stats.add_delivery(delivery, time.time() if now is None else now)
        if layout is not None:
            self.recent.add_layout(layout)

    def advanced(self, cursor: Cursor, in_flight: int, now: float | None = None) -> None:
        self.cursors.advanced(cursor, in_flight, now)

    def closed(self, cursor: Cursor) -> None:
        self.cursors.closed(cursor)

    def flush(self) -> None:
        self.cursors.flush()
