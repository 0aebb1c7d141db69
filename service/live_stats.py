"""Live statistics of a running service: what was packed, what was delivered, and when.

Two kinds of numbers, kept apart on purpose:
- Packing stats (the two efficiencies of packer.plan.stats, histograms, rejected
  images) count each global batch of an
  epoch once, overall and per config version, however many times it was sent (a trainer
  that reconnects with an older cursor is sent some batches again).
- Delivery throughput (images/s, tokens/s, sequences/s, bytes/s) counts what left the
  service, per one-second bucket, so the last minute and a timeline come from the same
  ring of buckets.

Both are fed one `Delivery` per batch sent: what a batch adds to either count, worked
out where the batch leaves (this process, or a streamer, which sends it here as JSON:
`Delivery.to_dict`), so the numbers are the same whichever process sent the batch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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

    def add(self, counts: _Bucket | Delivery, batches: int) -> None:
        """Add `batches` and the counts of a bucket or a delivery (same names)."""
        self.batches += batches
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(counts, name))


_COUNTS = ("sequences", "images", "real_tokens", "pad_tokens", "filler_tokens", "bytes")


@dataclass(frozen=True)
class Delivery:
    """What one batch sent to a rank adds to the live statistics: its packing stats
    (counted once per global batch of an epoch) and its throughput (counted every time).

    For two sequences of 8 tokens holding 5 and 4 real tokens: sequences 2, real 9,
    pad 7, filler 0; `packing` is PackingStats.add_filled of that one batch.
    """

    epoch: int
    global_batch: int
    config_version: int
    packing: PackingStats
    sequences: int  # sequences that hold an image
    images: int
    real_tokens: int
    pad_tokens: int  # in sequences that hold images
    filler_tokens: int  # of sequences that hold none
    bytes: int

    @classmethod
    def of(
        cls,
        plan: BatchPlan,
        packed: PackedBatch,
        rejected_reasons: list[str],
        nbytes: int,
        notes: Iterable[str] = (),
    ) -> Delivery:
        packing = PackingStats()
        packing.add_filled(plan, packed, rejected_reasons, notes)
        sequences = int(np.count_nonzero(packed.images_per_seq))
        real = packed.real_tokens
        return cls(
            epoch=plan.epoch,
            global_batch=plan.global_batch,
            config_version=plan.config_version,
            packing=packing,
            sequences=sequences,
            images=packed.num_images,
            real_tokens=real,
            pad_tokens=sequences * packed.seq_len - real,
            filler_tokens=(packed.num_sequences - sequences) * packed.seq_len,
            bytes=nbytes,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the counters of `packing` as objects with string keys."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["packing"] = {
            f.name: _wire_counter(value) if isinstance(value, Counter) else value
            for f in dataclasses.fields(PackingStats)
            for value in [getattr(self.packing, f.name)]
        }
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Delivery:
        """The inverse of `to_dict`; a ValueError says what is malformed."""
        try:
            packing = PackingStats(
                **{
                    name: _counter_of(name, value) if isinstance(value, dict) else value
                    for name, value in values["packing"].items()
                }
            )
            fields = {f.name: values[f.name] for f in dataclasses.fields(cls)}
            fields["packing"] = packing
            for name, value in fields.items():
                if name != "packing" and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"{name}: must be an integer, got {value!r}")
            return cls(**fields)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed delivery: {error}") from None


# PackingStats counters keyed by a number (the rest are keyed by a reason or a kind).
_NUMBER_KEYED = ("images_per_sequence", "tokens_per_image")


def _wire_counter(counter: Counter) -> dict[str, int]:
    return {str(k): int(v) for k, v in counter.items()}


def _counter_of(name: str, values: dict[str, int]) -> Counter:
    if name in _NUMBER_KEYED:
        return Counter({int(k): int(v) for k, v in values.items()})
    return Counter({str(k): int(v) for k, v in values.items()})


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
        """Count a batch that left this process (see `add_delivery`)."""
        self.add_delivery(Delivery.of(plan, packed, rejected_reasons, nbytes, notes), now)

    def add_delivery(self, delivery: Delivery, now: float | None = None) -> None:
        """Count a batch sent to a rank: its packing once per (epoch, global batch), its
        throughput in the bucket of `now`."""
        now = time.time() if now is None else now
        with self._lock:
            counted = self._counted.setdefault(delivery.epoch, set())
            if delivery.global_batch not in counted:
                counted.add(delivery.global_batch)
                self._total.merge(delivery.packing)
                version = self._by_version.setdefault(delivery.config_version, PackingStats())
                version.merge(delivery.packing)
                # Keep the dedup sets of the last few epochs only: memory stays bounded.
                for old in sorted(self._counted)[:-4]:
                    del self._counted[old]
            if self._first_delivery is None:
                self._first_delivery = now
            start = now - now % self.bucket_s
            if not self._buckets or self._buckets[-1].start < start:
                self._buckets.append(_Bucket(start=start))
            for bucket in (self._buckets[-1], self._delivered):
                bucket.add(delivery, 1)

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
            last.add(b, b.batches)
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


class SentBytes:
    """Bytes a Flight server handed to gRPC: batches with their app_metadata, FlightInfo,
    schemas and action results (gRPC's and TCP's own framing not counted). The
    coordinator's count, against the bytes the ranks received, says how much of the
    data path still runs through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._total += nbytes

    @property
    def total(self) -> int:
        with self._lock:
            return self._total
