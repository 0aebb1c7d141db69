"""The token layout of the batches sent lately, which the dashboard draws.

`RecentLayouts` keeps the last batches that held images; `sequences()` says which image
spans which tokens of each of their sequences (GET /sequences/recent). A batch a
streamer sent arrives already drawn (`RenderedLayout`: its `SentLayout.sequences()`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from packer.contract.cursor import BatchMetadata
from packer.contract.schema import PackedBatch


@dataclass(frozen=True)
class SentLayout:
    """The token layout of a batch sent lately: which image spans which tokens."""

    metadata: BatchMetadata
    segment_ids: np.ndarray  # [B, L] int32, 0 = padding, 1..k = k-th image of the row
    images_per_seq: np.ndarray  # [B]
    image_ids: list[str]  # [N], in row then slot order
    labels: np.ndarray  # [N]

    @classmethod
    def of(cls, metadata: BatchMetadata, packed: PackedBatch) -> SentLayout:
        # Copies: a view would pin the whole batch, pixels included.
        return cls(
            metadata,
            packed.segment_ids.copy(),
            packed.images_per_seq.copy(),
            list(packed.image_ids),
            packed.labels.copy(),
        )

    def sequences(self) -> list[dict[str, Any]]:
        """One dict per non-empty row. A row [1, 1, 1, 2, 2, 0] (seq_len 6) has segments
        {slot 1, start 0, length 3} and {slot 2, start 3, length 2}, real_tokens 5."""
        out = []
        image = 0
        seq_len = int(self.segment_ids.shape[1])
        for row, n in enumerate(self.images_per_seq.tolist()):
            if n == 0:
                continue
            lengths = np.bincount(self.segment_ids[row], minlength=n + 1)[1:].tolist()
            start = 0
            segments = []
            for slot, length in enumerate(lengths):
                segments.append(
                    {
                        "slot": slot + 1,
                        "start": start,
                        "length": length,
                        "image_id": self.image_ids[image + slot],
                        "label": int(self.labels[image + slot]),
                    }
                )
                start += length
            out.append(
                {
                    "epoch": self.metadata.epoch,
                    "rank": self.metadata.rank,
                    "batch": self.metadata.batch,
                    "global_batch": self.metadata.global_batch,
                    "row": row,
                    "config_version": self.metadata.config_version,
                    "seq_len": seq_len,
                    "real_tokens": start,
                    "segments": segments,
                }
            )
            image += n
        return out


class Layout(Protocol):
    """A batch's layout: its non-empty rows as `SentLayout.sequences()` gives them."""

    def sequences(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class RenderedLayout:
    """A batch's layout as a streamer sent it: `SentLayout.sequences()`, already drawn."""

    rows: list[dict[str, Any]]

    def sequences(self) -> list[dict[str, Any]]:
        return self.rows


class RecentLayouts:
    """The layouts of the last `keep` batches sent that held any image."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._layouts: deque[Layout] = deque(maxlen=keep)

    def add(self, metadata: BatchMetadata, packed: PackedBatch) -> None:
        if not packed.num_images:
            return  # an all-padding batch: nothing to draw
        self.add_layout(SentLayout.of(metadata, packed))

    def add_layout(self, layout: Layout) -> None:
        with self._lock:
            self._layouts.append(layout)

    def sequences(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last `limit` packed sequences sent, oldest first, with each image's span."""
        limit = limit or self.keep
        with self._lock:
            layouts = list(self._layouts)
        sequences: list[dict[str, Any]] = []
        for layout in reversed(layouts):
            sequences[:0] = layout.sequences()
            if len(sequences) >= limit:
                break
        return sequences[-limit:]
