"""What the control plane shows of a running job: /stats, the dashboard, trainer reports.

- `BatchLayout` / `RecentLayouts`: the token layout of the batches sent lately, which
  the dashboard draws (which image spans which tokens of each sequence).
- `TrainerReports`: what each trainer rank last said about its step and data wait.
- `rank_rows` and `summary`: the dicts GET /stats answers with.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from packer.contract.cursor import BatchMetadata
from packer.contract.schema import PackedBatch

if TYPE_CHECKING:
    from service.job.job import ServiceJob
    from service.job.streams import RankStatus

# A trainer that spends more than a fifth of its step waiting for data is data-starved.
STARVED_WAIT_FRACTION = 0.2


@dataclass(frozen=True)
class BatchLayout:
    """The token layout of a batch sent lately: which image spans which tokens."""

    metadata: BatchMetadata
    segment_ids: np.ndarray  # [B, L] int32, 0 = padding, 1..k = k-th image of the row
    images_per_seq: np.ndarray  # [B]
    image_ids: list[str]  # [N], in row then slot order
    labels: np.ndarray  # [N]

    @classmethod
    def of(cls, metadata: BatchMetadata, packed: PackedBatch) -> BatchLayout:
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


class RecentLayouts:
    """The layouts of the last `keep` batches sent that held any image."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._layouts: deque[BatchLayout] = deque(maxlen=keep)

    def add(self, metadata: BatchMetadata, packed: PackedBatch) -> None:
        if not packed.num_images:
            return  # an all-padding batch: nothing to draw
        layout = BatchLayout.of(metadata, packed)
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


class TrainerReports:
    """The latest report of each trainer rank, with its data-wait fraction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[int, dict[str, Any]] = {}

    def add(self, rank: int, report: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        step_time = report.get("step_time_s") or 0.0
        wait = report.get("data_wait_s") or 0.0
        fraction = min(wait / step_time, 1.0) if step_time > 0 else 0.0
        entry = {
            **report,
            "rank": rank,
            "data_wait_fraction": round(fraction, 4),
            "starved": fraction > STARVED_WAIT_FRACTION,
            "received_at": time.time() if now is None else now,
        }
        with self._lock:
            self._latest[rank] = entry
        return entry

    def entries(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each rank's latest report by rank, with its age in seconds."""
        now = time.time() if now is None else now
        with self._lock:
            entries = [dict(e) for _, e in sorted(self._latest.items())]
        for e in entries:
            e["age_s"] = round(now - e.pop("received_at"), 3)
        return entries


def rank_rows(ranks: list[tuple[RankStatus, int]], now: float) -> list[dict[str, Any]]:
    """Each rank's cursor and its lag behind the furthest rank of its world size.

    With ranks 0 and 1 of 2 at (epoch 0, batch 5) and (epoch 0, batch 3), rank 1 lags
    by 2 batches; a rank an epoch behind lags by 1 epoch and lag_batches is None.
    """
    lead: dict[int, tuple[int, int]] = {}
    for rank, _ in ranks:
        c = rank.cursor
        lead[c.world_size] = max(lead.get(c.world_size, (0, 0)), (c.epoch, c.next_batch))
    rows = []
    for rank, in_flight in ranks:
        c = rank.cursor
        lead_epoch, lead_batch = lead[c.world_size]
        rows.append(
            {
                "rank": c.rank,
                "world_size": c.world_size,
                "epoch": c.epoch,
                "next_batch": c.next_batch,
                "batches_sent": rank.batches_sent,
                "connected": rank.open_streams > 0,
                "in_flight": in_flight,
                "lag_epochs": lead_epoch - c.epoch,
                "lag_batches": lead_batch - c.next_batch if lead_epoch == c.epoch else None,
                "idle_s": round(now - rank.updated_at, 3),
            }
        )
    return rows


def summary(job: ServiceJob, now: float) -> dict[str, Any]:
    """Everything GET /stats shows."""
    current = job.config_version
    packing = job.stats.packing()
    by_version = job.stats.by_version()
    configs = {e.version: e for e in list(job.history.entries)}
    active, max_seen = job.rank_streams.open_counts()
    trainers = job.trainers(now)
    return {
        "dataset": job.dataset,
        "uptime_s": round(now - job.started_at, 3),
        "config_version": current.version,
        "images": job.num_images,
        "valid_images": job.num_valid_images,
        "holdout": {
            "fraction": job.options.holdout_fraction,
            "seed": job.options.holdout_seed,
            "held_out_images": job.held_out_images,
        },
        "efficiency": packing["efficiency"],
        "packing": packing,
        "throughput": job.stats.throughput(now),
        "by_config_version": [
            {
                "config_version": v,
                "from_epoch": configs[v].epoch if v in configs else None,
                "from_window": configs[v].window if v in configs else None,
                "stats": s,
            }
            for v, s in by_version.items()
        ],
        "rejected_by_reason": packing["rejected_by_reason"],
        "notes": packing["notes"],
        "skipped_by_extension": packing["skipped_by_extension"],
        "ranks": job.rank_positions(now),
        "streams": {
            "active": active,
            "max_in_flight": job.options.max_in_flight,
            "max_in_flight_seen": max_seen,
        },
        "trainers": trainers,
        "trainers_starved": sum(1 for t in trainers if t["starved"]),
    }
