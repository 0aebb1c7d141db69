"""Packing statistics: what a plan predicts (`navit simulate`) and what a fill delivered.

Both sides count the same way, so a simulation equals the delivered stats whenever no
image is rejected at decode time. Two efficiencies, both exact token counts:

- `packing_efficiency` = real / (real + pad) over the sequences that hold images: what
  the packer controls (how full it fills a sequence);
- `delivered_efficiency` = real / every token sent, all-padding filler sequences
  included: what the GPU sees. A sequence with no image is a filler (`filler_sequences`,
  `filler_tokens`); the planner sends one only in an epoch's tail when fewer sequences
  are left than ranks (packer.contract.rank_layout), so the two figures differ by those.

For 3 sequences of 10 tokens holding 9, 10 and 8 real tokens and one filler sequence:
packing 27 / 30 = 90%, delivered 27 / 40 = 67.5%.

Beside the packing: `notes` counts Pillow's warnings by kind (packer.image.notes) for the
images the fill decoded (a simulation decodes nothing, so it has none), and
`skipped_by_extension` the dataset's files that are not dataset files, once per run
(not per epoch), e.g. {".txt": 3, ".tar": 1}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from packer.contract.schema import PackedBatch
from packer.plan.batch_plan import BatchLayout, BatchPlan


def _token_buckets(tokens: np.ndarray) -> dict[int, int]:
    """Images per power-of-two bucket of tokens, by lower edge: 1, 2, 4, ...

    For tokens [300, 256, 3, 1]: {256: 2, 2: 1, 1: 1} (300 and 256 fall in bucket 256).
    """
    exponents = np.floor(np.log2(np.maximum(np.asarray(tokens, np.int64), 1))).astype(np.int64)
    values, counts = np.unique(exponents, return_counts=True)
    return {1 << int(e): int(c) for e, c in zip(values.tolist(), counts.tolist(), strict=True)}


def _counts(values: np.ndarray) -> dict[int, int]:
    """{value: how many times} of an integer array."""
    found, counts = np.unique(values, return_counts=True)
    return dict(zip(found.tolist(), counts.tolist(), strict=True))


@dataclass
class PackingStats:
    images_in: int = 0
    images_packed: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> images
    batches: int = 0
    sequences: int = 0
    filler_sequences: int = 0
    filler_tokens: int = 0
    real_tokens: int = 0
    pad_tokens: int = 0
    images_per_sequence: Counter = field(default_factory=Counter)  # k -> sequences
    tokens_per_image: Counter = field(default_factory=Counter)  # bucket -> images
    notes: Counter = field(default_factory=Counter)  # note kind -> images with it
    skipped_by_extension: Counter = field(default_factory=Counter)  # ".txt" -> files
    elapsed_s: float = 0.0

    @property
    def packing_efficiency(self) -> float:
        """Real tokens / tokens of the sequences that hold images."""
        total = self.real_tokens + self.pad_tokens
        return self.real_tokens / total if total else 0.0

    @property
    def delivered_efficiency(self) -> float:
        """Real tokens / every token of every sequence, filler sequences included."""
        total = self.real_tokens + self.pad_tokens + self.filler_tokens
        return self.real_tokens / total if total else 0.0

    @property
    def images_rejected(self) -> int:
        return sum(self.rejected.values())

    def add_rejected(self, reasons: list[str]) -> None:
        """Images rejected before planning (unreadable headers): in, but never packed."""
        self.images_in += len(reasons)
        self.rejected.update(reasons)

    def add_plan(self, plan: BatchPlan | BatchLayout) -> None:
        """Count a planned batch as the planner predicts it will be delivered (a layout
        counts the same: no image location is needed to count)."""
        seq_len = plan.config.seq_len
        per_seq = np.bincount(plan.sequence, minlength=0)
        planned = int(np.count_nonzero(per_seq))
        self.batches += 1
        self.images_in += plan.num_images
        self.images_packed += plan.num_images
        self.sequences += planned
        self.filler_sequences += plan.num_sequences - planned
        self.filler_tokens += (plan.num_sequences - planned) * seq_len
        self.real_tokens += plan.real_tokens
        self.pad_tokens += planned * seq_len - plan.real_tokens
        self.images_per_sequence.update(_counts(per_seq[per_seq > 0]))
        self.tokens_per_image.update(_token_buckets(plan.num_kept))

    def add_skipped(self, skipped_by_extension: dict[str, int]) -> None:
        """Files of the dataset that are not dataset files (packer.index.table.index_skipped)."""
        self.skipped_by_extension.update(skipped_by_extension)

    def add_filled(
        self,
        plan: BatchPlan,
        packed: PackedBatch,
        rejected: list[str],
        notes: Iterable[str] = (),
    ) -> None:
        """Count a delivered batch; `rejected` holds the reasons of its fill-time rejects,
        `notes` the kinds of its images' notes."""
        self.notes.update(notes)
        planned = int(np.count_nonzero(np.bincount(plan.sequence, minlength=0)))
        real = packed.real_tokens
        self.batches += 1
        self.images_in += plan.num_images
        self.images_packed += packed.num_images
        self.rejected.update(rejected)
        self.sequences += planned
        self.filler_sequences += packed.num_sequences - planned
        self.filler_tokens += (packed.num_sequences - planned) * packed.seq_len
        self.real_tokens += real
        self.pad_tokens += planned * packed.seq_len - real
        k = packed.images_per_seq
        self.images_per_sequence.update(_counts(k[k > 0]))
        # Each image's tokens: count (row, segment) pairs of the real tokens at once.
        rows, segments = np.nonzero(packed.segment_ids)
        slot = packed.segment_ids[rows, segments].astype(np.int64)
        first = np.concatenate([[0], np.cumsum(k, dtype=np.int64)])[:-1]
        lengths = np.bincount(first[rows] + slot - 1, minlength=packed.num_images)
        self.tokens_per_image.update(_token_buckets(lengths[lengths > 0]))

    def merge(self, other: PackingStats) -> None:
        """Add `other`'s counts to these, field by field (Counters by key)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Counter):
                mine.update(theirs)
            else:
                setattr(self, f.name, mine + theirs)

    def to_dict(self) -> dict[str, Any]:
        ips = self.images_per_sequence
        n_seq = sum(ips.values())
        elapsed = self.elapsed_s
        return {
            "images_in": self.images_in,
            "images_packed": self.images_packed,
            "images_rejected": self.images_rejected,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "batches": self.batches,
            "sequences": self.sequences,
            "filler_sequences": self.filler_sequences,
            "filler_tokens": self.filler_tokens,
            "real_tokens": self.real_tokens,
            "pad_tokens": self.pad_tokens,
            "packing_efficiency": round(self.packing_efficiency, 6),
            "delivered_efficiency": round(self.delivered_efficiency, 6),
            "images_per_sequence_mean": round(self.images_packed / n_seq, 4) if n_seq else 0.0,
            "tokens_per_image_mean": (
                round(self.real_tokens / self.images_packed, 2) if self.images_packed else 0.0
            ),
            "images_per_sequence_hist": {str(k): v for k, v in sorted(ips.items())},
            "tokens_per_image_hist": {str(k): v for k, v in sorted(self.tokens_per_image.items())},
            "notes": dict(sorted(self.notes.items())),
            "skipped_by_extension": dict(sorted(self.skipped_by_extension.items())),
            "elapsed_s": round(elapsed, 3),
            "images_per_s": round(self.images_packed / elapsed, 2) if elapsed else None,
            "tokens_per_s": round(self.real_tokens / elapsed, 1) if elapsed else None,
        }
