"""Live statistics of a running service: what was packed, what was delivered, and when.

Two kinds of numbers, kept apart on purpose:
- Packing stats (the two efficiencies of packer.plan.stats, histograms, rejected
  images) count each global batch of an
  epoch once, overall and per config version, however many times it was sent (a trainer
  that reconnects with an older cursor is sent some batches again).
- Delivery throughput (images/s, tokens/s, sequences/s, bytes/s) counts what left the
  service, per one-second bucket, so the last minute and a timeline come from the same
  ring of buckets.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from packer.contract.schema import PackedBatch
from packer.plan.batch_plan import BatchPlan
from packer.plan.stats import PackingStats


@dataclass
class _Bucket:
    start: float  # unix seconds, a multiple of the bucket width
    batches: int = 0
    sequences: int = 0
    images: int = 0
    real_tokens: int = 0
    pad_tokens: int = 0  # in sequences that hold images
    filler_tokens: int = 0  # of sequences that hold none
    bytes: int = 0


def _rate(amount: float, seconds: float) -> float:
    return round(amount / seconds, 3) if seconds > 0 else 0.0


class LiveStats:
    """Thread-safe accumulators fed by every rank stream."""

    def __init__(self, bucket_s: float = 1.0, keep_buckets: int = 900) -> None:
        self.bucket_s = bucket_s
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._total = PackingStats()
        self._by_version: dict[int, PackingStats] = {}
        self._counted: dict[int, set[int]] = {}  # epoch -> global batches counted
        self._header_counted: set[int] = set()  # epochs whose header rejects are counted
        self._buckets: deque[_Bucket] = deque(maxlen=keep_buckets)
        self._delivered = _Bucket(start=0.0)
        self._first_delivery: float | None = None

    def add_skipped(self, skipped_by_extension: dict[str, int]) -> None:
        """The dataset's files that are not dataset files, once per job."""
        with self._lock:
            self._total.add_skipped(skipped_by_extension)

    def add_header_rejected(self, epoch: int, reasons: list[str]) -> None:
        """Images whose headers could not be read: rejected once per epoch."""
        with self._lock:
            if epoch in self._header_counted:
                return
            self._header_counted.add(epoch)
            self._total.add_rejected(reasons)

    def add_delivered(
        self,
        plan: BatchPlan,
        packed: PackedBatch,
        rejected_reasons: list[str],
        nbytes: int,
        now: float | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        now = time.time() if now is None else now
        k = packed.images_per_seq
        sequences = int(np.count_nonzero(k))
        real = packed.real_tokens
        pad = sequences * packed.seq_len - real
        filler = (packed.num_sequences - sequences) * packed.seq_len
        with self._lock:
            counted = self._counted.setdefault(plan.epoch, set())
            if plan.global_batch not in counted:
                counted.add(plan.global_batch)
                self._total.add_filled(plan, packed, rejected_reasons, notes)
                version = self._by_version.setdefault(plan.config_version, PackingStats())
                version.add_filled(plan, packed, rejected_reasons, notes)
                # Keep the dedup sets of the last few epochs only: memory stays bounded.
                for old in sorted(self._counted)[:-4]:
                    del self._counted[old]
            if self._first_delivery is None:
                self._first_delivery = now
            start = now - now % self.bucket_s
            if not self._buckets or self._buckets[-1].start < start:
                self._buckets.append(_Bucket(start=start))
            for bucket in (self._buckets[-1], self._delivered):
                bucket.batches += 1
                bucket.sequences += sequences
                bucket.images += packed.num_images
                bucket.real_tokens += real
                bucket.pad_tokens += pad
                bucket.filler_tokens += filler
                bucket.bytes += nbytes

    def packing(self) -> dict:
        with self._lock:
            return self._total.to_dict()

    def by_version(self) -> dict[int, dict]:
        with self._lock:
            return {v: s.to_dict() for v, s in sorted(self._by_version.items())}

    def throughput(self, now: float | None = None, window_s: float = 60.0) -> dict:
        """Delivery rates over the whole run and over the last `window_s` seconds."""
        now = time.time() if now is None else now
        with self._lock:
            total = _Bucket(**vars(self._delivered))
            recent = [b for b in self._buckets if b.start > now - window_s]
            first = self._first_delivery
        run_s = now - first if first is not None else 0.0
        # The last minute is the shorter of 60 s and the time since the first delivery.
        window = min(window_s, run_s) if first is not None else 0.0
        last = _Bucket(start=0.0)
        for b in recent:
            last.batches += b.batches
            last.sequences += b.sequences
            last.images += b.images
            last.real_tokens += b.real_tokens
            last.pad_tokens += b.pad_tokens
            last.filler_tokens += b.filler_tokens
            last.bytes += b.bytes
        return {
            "run": _rates(total, run_s),
            "last_minute": _rates(last, window),
        }

    def timeline(self, limit: int = 300) -> list[dict]:
        """Per-bucket delivery rates, oldest first (buckets without deliveries omitted)."""
        with self._lock:
            buckets = list(self._buckets)[-limit:]
        return [{"t": b.start, **_rates(b, self.bucket_s)} for b in buckets]


def _rates(bucket: _Bucket, seconds: float) -> dict:
    tokens = bucket.real_tokens + bucket.pad_tokens  # of sequences with images
    sent = tokens + bucket.filler_tokens
    return {
        "seconds": round(seconds, 3),
        "batches": bucket.batches,
        "sequences": bucket.sequences,
        "images": bucket.images,
        "real_tokens": bucket.real_tokens,
        "pad_tokens": bucket.pad_tokens,
        "filler_tokens": bucket.filler_tokens,
        "bytes": bucket.bytes,
        "packing_efficiency": round(bucket.real_tokens / tokens, 6) if tokens else 0.0,
        "delivered_efficiency": round(bucket.real_tokens / sent, 6) if sent else 0.0,
        "batches_per_s": _rate(bucket.batches, seconds),
        "sequences_per_s": _rate(bucket.sequences, seconds),
        "images_per_s": _rate(bucket.images, seconds),
        "tokens_per_s": _rate(bucket.real_tokens, seconds),
        "bytes_per_s": _rate(bucket.bytes, seconds),
    }
