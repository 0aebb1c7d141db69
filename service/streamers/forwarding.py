"""`ForwardedEvents`: a streamer's rank streams tell the coordinator what they did.

The streamer's `RankStreams` reports to this instead of a recorder
(service.job.streams.StreamEvents); each event becomes one JSON object queued on the
event reporter (service.streamers.wire lists them), and the coordinator replays them
into the job's recorder. A delivered batch is worked out here, where its pixels are:
its `Delivery` (packing and throughput counts) travels, never the batch. Its layout
(which image spans which tokens, for the dashboard's picture) travels for at most one
batch each `layout_interval_s`: the dashboard draws a dozen sequences, and drawing
every batch would cost the coordinator a JSON parse per batch for nothing. An epoch's
header rejects travel once (every rank stream of the epoch reports the same list, and
the coordinator counts it once an epoch: LiveStats.add_header_rejected).
"""

from __future__ import annotations

import threading
import time

from packer.contract.cursor import BatchMetadata, Cursor
from packer.contract.schema import PackedBatch
from service.job.layouts import SentLayout
from service.live_stats import Delivery
from service.streamers.reporter import EventReporter


class ForwardedEvents:
    """StreamEvents that go to the coordinator through `reporter`."""

    def __init__(self, reporter: EventReporter, layout_interval_s: float = 0.5) -> None:
        self._reporter = reporter
        self.layout_interval_s = layout_interval_s
        self._last_layout = float("-inf")
        self._lock = threading.Lock()
        self._header_posted: set[int] = set()  # epochs whose header rejects were posted

    def opened(self, cursor: Cursor) -> None:
        self._post("opened", cursor=cursor.to_dict())

    def header_rejected(self, epoch: int, reasons: list[str]) -> None:
        with self._lock:
            if epoch in self._header_posted:
                return
            self._header_posted.add(epoch)
        self._post("header_rejected", epoch=epoch, reasons=reasons)

    def delivered(self, metadata: BatchMetadata, packed: PackedBatch, delivery: Delivery) -> None:
        layout = None
        now = time.monotonic()
        if packed.num_images and now - self._last_layout >= self.layout_interval_s:
            self._last_layout = now
            layout = SentLayout.of(metadata, packed).sequences()
        self._post("delivered", delivery=delivery.to_dict(), layout=layout)

    def advanced(self, cursor: Cursor, in_flight: int) -> None:
        self._post("advanced", cursor=cursor.to_dict(), in_flight=in_flight)

    def closed(self, cursor: Cursor) -> None:
        self._post("closed", cursor=cursor.to_dict())

    def flush(self) -> None:
        self._reporter.flush()

    def _post(self, kind: str, **values: object) -> None:
        self._reporter.post({"kind": kind, "t": time.time(), **values})
