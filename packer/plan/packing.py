"""Bin packing of images (by token count) into fixed-length sequences. Pure Python/numpy.

A bin is one packed sequence: a list of image positions and the tokens they use. Items
are placed whole (an image's tokens are contiguous), at most `max_images` per bin, at
most `capacity` tokens per bin. Slot order in a bin is insertion order, so the sequence
built from bin [7, 2, 9] holds image 7 in slot 1, image 2 in slot 2, image 9 in slot 3.

Three strategies:
- exact fit (ours, the default): build one sequence at a time. Start it with the largest
  waiting image, add the largest images that still leave room to fine-tune, then finish
  it with a subset-sum over the small waiting images that fills the last tokens exactly.
  For capacity 10 and sizes [6, 5, 4, 3, 2] it builds [6, 4] then [5, 3, 2].
- best-fit decreasing: sort a window's images by size, largest first, and put each in
  the open bin it fills most tightly; the same sizes give [6, 4], [5, 3, 2] too.
- next-fit in input order (the public vit-pytorch NaViT): one open bin, closed as soon
  as the next image does not fit; the same sizes give [6], [5, 4], [3, 2]: 33% padding.

Where they differ is the last few tokens of each sequence. Image sizes are products of
two grid sides (14, 15, 16, 18, 20, 21, 24, ... tokens at the defaults), so best fit
can end a sequence 1 to 13 tokens short, which no image can fill; exact fit chooses
the last images so that the sequence ends exactly full where the waiting sizes allow.
How often each ends full, and the efficiencies: see bench/RESULTS.md.

With carry-over, a window leaves something to the next (still a deterministic plan):
best fit its emptiest open bins, next fit its open bin, exact fit a few waiting images
(the small ones that finish sequences), none waiting more than `max_wait` windows.
"""

from __future__ import annotations

import bisect
from collections import deque
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
    them the next window's images closes slack (how much: see bench/RESULTS.md). Next fit
    carries only its last (open) bin, as the public implementation does across a stream.
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


class _WaitingPool:
    """Images waiting for a sequence, by size; each size a FIFO of (position, window).

    Taking an image of size s takes the oldest waiting one of that size, so the pool
    never reorders images of equal size and `max_wait` can be honoured by age alone.
    """

    def __init__(self, waiting: list[tuple[int, int, int]]) -> None:
        self.by_size: dict[int, deque[tuple[int, int]]] = {}
        self.count = 0
        for size, position, window in waiting:
            self.by_size.setdefault(size, deque()).append((position, window))
            self.count += 1
        self.sizes = sorted(self.by_size)  # distinct sizes with a waiting image

    def take(self, size: int) -> tuple[int, int]:
        """The oldest waiting image of this size, as (position, window drawn)."""
        queue = self.by_size[size]
        image = queue.popleft()
        self.count -= 1
        if not queue:
            del self.by_size[size]
            self.sizes.pop(bisect.bisect_left(self.sizes, size))
        return image

    def put_back(self, size: int, image: tuple[int, int]) -> None:
        """Undo the latest take of this size (it was the oldest, so it goes first again)."""
        queue = self.by_size.get(size)
        if queue is None:
            queue = self.by_size[size] = deque()
            bisect.insort(self.sizes, size)
        queue.appendleft(image)
        self.count += 1

    def largest_at_most(self, limit: int) -> int | None:
        at = bisect.bisect_right(self.sizes, limit)
        return self.sizes[at - 1] if at else None

    def oldest_from_before(self, window: int) -> int | None:
        """The size whose oldest image was drawn before `window`, oldest first."""
        found = None
        for size in self.sizes:
            drawn = self.by_size[size][0][1]
            if drawn < window and (found is None or drawn < found[0]):
                found = (drawn, size)
        return None if found is None else found[1]

    def items(self) -> list[tuple[int, int, int]]:
        return [(s, p, w) for s in self.sizes for p, w in self.by_size[s]]


def _subset_filling(pool: _WaitingPool, target: int, slots: int) -> list[int]:
    """Sizes of waiting images with the largest sum <= target (exact where possible).

    A subset-sum over a bitset (a Python int; bit t set = some subset sums to t). Each
    size enters at most min(waiting, target // size) times, largest sizes first, and the
    walk back skips an image whenever the rest still reach the sum, so the small images
    that finish other sequences are spent last. For target 9 and waiting sizes
    [2, 2, 3, 5, 7] it picks [7, 2]. More than `slots` images: a largest-first greedy fill.

    Size by size, never copy by copy: the walk back over the m copies of a size s takes
    the fewest copies t that leave a sum the larger sizes reach (bit `remaining - t * s`
    of the bitset before s), and once the target itself is reached the smaller sizes
    would all be skipped, so they are never added. For target 9 and [2, 2, 3, 5, 7]: 7
    and 5 (above 9 / 2, one copy each) reach {0, 5, 7}; 3 adds {3, 8}; one 2 reaches 9,
    so the walk back takes one 2 and leaves 7, the one size above the half.
    """
    sizes, by_size = pool.sizes, pool.by_size
    top = bisect.bisect_right(sizes, target)
    half = bisect.bisect_right(sizes, target // 2, hi=top)
    # Sizes above target / 2 enter once (two of them pass the target), each adding its
    # own bit: the walk back takes at most one of them, the one the rest leave to fill.
    reach = 1
    for size in sizes[half:top]:
        reach |= 1 << size
    mask = (1 << (target + 1)) - 1
    groups: list[tuple[int, int]] = []  # (size, the bitset before its copies)
    if not reach >> target:
        for size in reversed(sizes[:half]):
            groups.append((size, reach))
            copies = min(len(by_size[size]), target // size)
            for _ in range(copies):
                reach = (reach | (reach << size)) & mask
            if reach >> target:
                break  # exact already: the smaller sizes would all be skipped
    remaining = reach.bit_length() - 1  # the largest reachable sum
    picked: list[int] = []
    for size, before in reversed(groups):
        while not (before >> remaining) & 1:
            remaining -= size
            picked.append(size)
    if remaining:
        picked.append(remaining)  # the one size above target / 2
    picked.reverse()  # largest first
    if len(picked) <= slots:
        return picked
    greedy: list[int] = []
    for size in reversed(sizes[:top]):
        for _ in range(min(len(by_size[size]), target // size)):  # largest first
            if len(greedy) < slots and sum(greedy) + size <= target:
                greedy.append(size)
    return greedy


def _fill_sequence(pool: _WaitingPool, seed: int, limits: BinLimits) -> Bin:
    """One sequence: the seed image, large images down to a small gap, then an exact fill.

    For capacity 1024, seed 576 and waiting sizes [400, 300, 30, 18]: 400 would leave 48
    free, enough to fine-tune, so it goes in; then the subset-sum fills 48 with 30 + 18.
    Had 400 left a gap no waiting images sum to, it goes back and the subset-sum retries
    on the larger gap of 448 (and so on, down to the seed alone).
    """
    capacity, max_images = limits.capacity, limits.max_images
    span = max(1, capacity // 8)  # the gap the subset-sum closes
    taken = [(seed, pool.take(seed))]
    used = seed
    while capacity - used > span and len(taken) < max_images and pool.count:
        free = capacity - used
        # The largest image that fills the gap exactly, or leaves room for two small ones
        # (a gap smaller than that is rarely fillable: sizes are products of grid sides).
        min_gap = 2 * pool.sizes[0]
        size = free if free in pool.by_size else pool.largest_at_most(free - min_gap)
        if size is None:
            break
        taken.append((size, pool.take(size)))
        used += size
    while True:
        free = capacity - used
        fill = _subset_filling(pool, free, max_images - len(taken)) if free and pool.count else []
        if sum(fill) == free or len(taken) == 1:
            break
        # Back off the last large image and retry on the larger gap; in the end the
        # subset-sum runs over every waiting image that fits beside the seed.
        size, image = taken.pop()
        pool.put_back(size, image)
        used -= size
    for size in fill:
        taken.append((size, pool.take(size)))
        used += size
    return Bin([position for _, (position, _) in taken], used)


def exact_fit(
    waiting: list[tuple[int, int, int]],
    limits: BinLimits,
    window: int,
    keep_waiting: int = 0,
    max_wait: int = 8,
) -> tuple[list[Bin], list[tuple[int, int, int]]]:
    """Build sequences from waiting (size, position, window drawn) images.

    Builds until at most `keep_waiting` images wait (the small ones, as the largest seed
    each sequence) and none of them was drawn `max_wait` or more windows before `window`;
    returns (sequences, images still waiting). The waiting ones give the next window's
    sequences their exact finishes.
    """
    for size, _, _ in waiting:
        if size > limits.capacity:
            raise ValueError(f"an item of {size} tokens cannot fit capacity {limits.capacity}")
    # Within a size, `waiting` lists older images first (items() keeps that order, and
    # pack_window appends a window's new images after the carried ones).
    pool = _WaitingPool(waiting)
    bins = []
    while pool.count:
        if pool.count > keep_waiting:
            seed = pool.sizes[-1]
        else:
            seed = pool.oldest_from_before(window - max_wait + 1)
            if seed is None:
                break
        bins.append(_fill_sequence(pool, seed, limits))
    return bins, pool.items()


@dataclass
class Carry:
    """What a window leaves to the next: open bins (best fit, next fit) and images not yet
    in any sequence (exact fit), each as (size, position, window drawn)."""

    bins: list[Bin] = field(default_factory=list)
    waiting: list[tuple[int, int, int]] = field(default_factory=list)


def pack_window(
    sizes: np.ndarray,
    positions: np.ndarray,
    limits: BinLimits,
    strategy: str,
    carry: Carry,
    window: int,
    keep: int,
) -> tuple[list[Bin], Carry]:
    """Pack one window's images with what the last window left; returns (finished, carry).

    `keep` bounds what is carried on: open bins for best fit, waiting images for exact
    fit (next fit carries its one open bin when keep > 0). keep=0 finishes everything, as
    at an epoch's end, when carry-over is off, or before a config change. The carry must
    come from the same strategy (the planner finishes it before any config change).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    if (strategy == "exact_fit" and carry.bins) or (strategy != "exact_fit" and carry.waiting):
        raise ValueError(f"a carry from another strategy cannot continue with {strategy!r}")
    if strategy == "exact_fit":
        drawn = zip(sizes.tolist(), positions.tolist(), strict=True)
        waiting = carry.waiting + [(s, p, window) for s, p in drawn]
        bins, still_waiting = exact_fit(waiting, limits, window, keep)
        return bins, Carry([], still_waiting)
    bins = pack(sizes, positions, limits, strategy, carry.bins)
    if keep == 0:
        return bins, Carry()
    emitted, carried = split_carry(bins, limits, strategy, keep)
    return emitted, Carry(carried)


def pack(
    sizes: np.ndarray,
    positions: np.ndarray,
    limits: BinLimits,
    strategy: str = "best_fit",
    open_bins: list[Bin] | None = None,
) -> list[Bin]:
    """Pack items with the named strategy (`exact_fit`, `best_fit` or `next_fit`)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    if strategy == "exact_fit":  # open bins pass through: exact fit builds whole sequences
        waiting = [(s, p, 0) for s, p in zip(sizes.tolist(), positions.tolist(), strict=True)]
        return list(open_bins or []) + exact_fit(waiting, limits, 0)[0]
    if strategy == "best_fit":
        return best_fit_decreasing(sizes, positions, limits, open_bins or [])
    if strategy == "next_fit":
        return next_fit(sizes, positions, limits, open_bins or [])
    raise ValueError(f"unknown packing strategy {strategy!r}")


def lower_bound_sequences(total_tokens: int, capacity: int) -> int:
    """No packing can use fewer sequences than ceil(total tokens / seq_len)."""
    return -(-total_tokens // capacity)
