"""Bin packing of images (by token count) into fixed-length sequences. Pure Python/numpy.

A bin is one packed sequence: a list of image positions and the tokens they use. Items
are placed whole (an image's tokens are contiguous), at most `max_images` per bin, at
most `capacity` tokens per bin. Slot order in a bin is insertion order, so the sequence
built from bin [7, 2, 9] holds image 7 in slot 1, image 2 in slot 2, image 9 in slot 3.

Two strategies:
- best-fit decreasing (ours): sort a window's images by size, largest first, and put
  each in the open bin it fills most tightly; for sizes [6, 5, 4, 3, 2] and capacity 10
  that gives bins [6, 4], [5, 3, 2]: no padding at all.
- next-fit in input order (the public vit-pytorch NaViT): one open bin, closed as soon
  as the next image does not fit; the same sizes give [6], [5, 4], [3, 2]: 33% padding.

With `carry`, the partly filled bins at a window's end stay open into the next window
(still a deterministic plan); only bins that are nearly full are emitted.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Bin:
    """One sequence under construction: image positions in slot order and tokens used."""

    items: list[int] = field(default_factory=list)
    used: int = 0


@dataclass(frozen=True)
class BinLimits:
    capacity: int  # tokens per sequence (seq_len)
    max_images: int  # images per sequence

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.max_images <= 0:
            raise ValueError(f"capacity and max_images must be positive, got {self}")


def best_fit_decreasing(
    sizes: np.ndarray, positions: np.ndarray, limits: BinLimits, open_bins: list[Bin]
) -> list[Bin]:
    """Place each item (largest first) into the fullest open bin it fits; returns all bins.

    `open_bins` (carried from an earlier window) are filled first where they fit best.
    Ties go to the earlier bin and, among equal sizes, the earlier position, so the
    result is a pure function of the inputs.
    """
    bins = list(open_bins)
    # Candidates sorted by (remaining capacity, bin number): bisect finds the tightest fit.
    candidates: list[tuple[int, int]] = [
        (limits.capacity - b.used, n)
        for n, b in enumerate(bins)
        if len(b.items) < limits.max_images
    ]
    candidates.sort()
    order = np.lexsort((positions, -sizes))  # size descending, then position ascending
    for i in order:
        size = int(sizes[i])
        if size > limits.capacity:
            raise ValueError(f"an item of {size} tokens cannot fit capacity {limits.capacity}")
        at = bisect.bisect_left(candidates, (size, -1))
        if at < len(candidates):
            remaining, n = candidates.pop(at)
        else:
            bins.append(Bin())
            remaining, n = limits.capacity, len(bins) - 1
        target = bins[n]
        target.items.append(int(positions[i]))
        target.used += size
        remaining -= size
        if remaining > 0 and len(target.items) < limits.max_images:
            bisect.insort(candidates, (remaining, n))
    return bins


def next_fit(
    sizes: np.ndarray, positions: np.ndarray, limits: BinLimits, open_bins: list[Bin]
) -> list[Bin]:
    """Next-fit in input order: only the last bin is open; a misfit closes it."""
    bins = list(open_bins)
    current = bins[-1] if bins else None
    for size, position in zip(sizes.tolist(), positions.tolist(), strict=True):
        if size > limits.capacity:
            raise ValueError(f"an item of {size} tokens cannot fit capacity {limits.capacity}")
        if (
            current is None
            or current.used + size > limits.capacity
            or len(current.items) >= limits.max_images
        ):
            current = Bin()
            bins.append(current)
        current.items.append(int(position))
        current.used += size
    return bins


def split_carry(
    bins: list[Bin], limits: BinLimits, strategy: str, max_carry: int
) -> tuple[list[Bin], list[Bin]]:
    """Split a window's bins into (emitted, carried into the next window).

    Best fit carries the at most `max_carry` emptiest bins that are under 99.9% full and
    still take images: BFD leaves its slack in the last few bins it opened, and giving
    them the next window's images closes most of that slack. Next fit carries only its
    last (open) bin, as the public implementation does across a stream.
    """
    if strategy == "next_fit":
        if bins and bins[-1].used < limits.capacity and len(bins[-1].items) < limits.max_images:
            return bins[:-1], bins[-1:]
        return bins, []
    threshold = limits.capacity - max(1, limits.capacity // 1000)
    open_numbers = [
        n for n, b in enumerate(bins) if b.used < threshold and len(b.items) < limits.max_images
    ]
    # Emptiest first; ties by bin number for determinism.
    open_numbers.sort(key=lambda n: (bins[n].used, n))
    carried_set = set(open_numbers[:max_carry])
    emitted = [b for n, b in enumerate(bins) if n not in carried_set]
    carried = [b for n, b in enumerate(bins) if n in carried_set]
    return emitted, carried


def pack(
    sizes: np.ndarray,
    positions: np.ndarray,
    limits: BinLimits,
    strategy: str = "best_fit",
    open_bins: list[Bin] | None = None,
) -> list[Bin]:
    """Pack items with the named strategy (`best_fit` or `next_fit`)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    if strategy == "best_fit":
        return best_fit_decreasing(sizes, positions, limits, open_bins or [])
    if strategy == "next_fit":
        return next_fit(sizes, positions, limits, open_bins or [])
    raise ValueError(f"unknown packing strategy {strategy!r}")


def lower_bound_sequences(total_tokens: int, capacity: int) -> int:
    """No packing can use fewer sequences than ceil(total tokens / seq_len)."""
    return -(-total_tokens // capacity)
