import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.plan.packing import (
    BinLimits,
    Carry,
    _subset_filling,
    _WaitingPool,
    exact_fit,
    lower_bound_sequences,
    pack,
    pack_window,
    split_carry,
)


def test_best_fit_decreasing_worked_example():
    bins = pack(np.array([6, 5, 4, 3, 2]), np.arange(5), BinLimits(10, 8), "best_fit")
    assert [b.items for b in bins] == [[0, 2], [1, 3, 4]]
    assert [b.used for b in bins] == [10, 10]


def test_exact_fit_worked_example():
    # Seed 6, then 4 fills the gap exactly; seed 5, then the subset-sum fills 5 with 3 + 2.
    bins = pack(np.array([6, 5, 4, 3, 2]), np.arange(5), BinLimits(10, 8), "exact_fit")
    assert [b.items for b in bins] == [[0, 2], [1, 3, 4]]


def test_subset_filling_prefers_large_images_and_finds_exact_sums():
    pool = _WaitingPool([(s, i, 0) for i, s in enumerate([2, 2, 3, 5, 7])])
    assert _subset_filling(pool, 9, slots=8) == [7, 2]
    assert sum(_subset_filling(pool, 17, slots=8)) == 17  # 7 + 5 + 3 + 2
    assert _subset_filling(pool, 1, slots=8) == []  # nothing fits: nothing taken
    assert sum(_subset_filling(pool, 17, slots=2)) <= 17  # few slots: best greedy fill


def test_exact_fit_fills_gaps_best_fit_leaves():
    # Best fit: [50, 36] and [35, 30, 21] both end 14 short, so 15 needs a third sequence.
    # Exact fit: seed 50 takes 15 (leaving 35, which one image fills exactly), then 35.
    sizes = np.array([50, 36, 35, 30, 21, 15])
    limits = BinLimits(100, 8)
    best = pack(sizes, np.arange(6), limits, "best_fit")
    assert [b.used for b in best] == [86, 86, 15]
    exact = pack(sizes, np.arange(6), limits, "exact_fit")
    assert [b.items for b in exact] == [[0, 5, 2], [1, 3, 4]]
    assert [b.used for b in exact] == [100, 87]


def test_next_fit_worked_example():
    bins = pack(np.array([6, 5, 4, 3, 2]), np.arange(5), BinLimits(10, 8), "next_fit")
    assert [b.items for b in bins] == [[0], [1, 2], [3, 4]]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 64), min_size=0, max_size=120),
    capacity=st.integers(64, 200),
    max_images=st.integers(1, 8),
    strategy=st.sampled_from(["exact_fit", "best_fit", "next_fit"]),
)
def test_every_item_packed_once_within_limits(sizes, capacity, max_images, strategy):
    limits = BinLimits(capacity, max_images)
    bins = pack(np.array(sizes, dtype=np.int64), np.arange(len(sizes)), limits, strategy)
    placed = sorted(i for b in bins for i in b.items)
    assert placed == list(range(len(sizes)))
    for b in bins:
        assert 0 < len(b.items) <= max_images
        assert b.used == sum(sizes[i] for i in b.items) <= capacity
    assert len(bins) >= lower_bound_sequences(sum(sizes), capacity)


@settings(max_examples=100, deadline=None)
@given(
    windows=st.lists(st.lists(st.integers(1, 50), max_size=40), min_size=1, max_size=5),
    max_carry=st.integers(1, 8),
)
def test_carried_bins_keep_items_once_across_windows(windows, max_carry):
    limits = BinLimits(100, 6)
    carry, emitted, start = [], [], 0
    for sizes in windows:
        positions = np.arange(start, start + len(sizes))
        start += len(sizes)
        bins = pack(np.array(sizes, dtype=np.int64), positions, limits, "best_fit", carry)
        out, carry = split_carry(bins, limits, "best_fit", max_carry)
        assert len(carry) <= max_carry
        emitted += out
    emitted += carry
    placed = sorted(i for b in emitted for i in b.items)
    assert placed == list(range(start))


@settings(max_examples=100, deadline=None)
@given(
    windows=st.lists(st.lists(st.integers(1, 60), max_size=40), min_size=1, max_size=12),
    keep=st.integers(0, 10),
    max_images=st.integers(1, 6),
)
def test_exact_fit_waiting_images_are_bounded_and_placed_once(windows, keep, max_images):
    limits = BinLimits(100, max_images)
    carry, emitted, start = Carry(), [], 0
    drawn_in = {}
    for window, sizes in enumerate(windows):
        positions = np.arange(start, start + len(sizes))
        drawn_in.update({int(p): window for p in positions})
        start += len(sizes)
        last = window == len(windows) - 1
        keep_now = 0 if last else keep
        out, carry = pack_window(
            np.array(sizes, np.int64), positions, limits, "exact_fit", carry, window, keep_now
        )
        assert len(carry.waiting) <= keep_now and not carry.bins
        # No image waits 8 windows or more (exact_fit's default max_wait).
        for b in out:
            assert all(window - drawn_in[i] <= 8 for i in b.items)
            assert 0 < len(b.items) <= max_images and b.used <= 100
        emitted += out
    placed = sorted(i for b in emitted for i in b.items)
    assert placed == list(range(start))


def test_exact_fit_rejects_a_carry_from_another_strategy():
    with pytest.raises(ValueError, match="another strategy"):
        pack_window(
            np.array([5]),
            np.array([0]),
            BinLimits(10, 4),
            "exact_fit",
            Carry(bins=pack(np.array([3]), np.array([1]), BinLimits(10, 4), "best_fit")),
            0,
            0,
        )


def test_an_image_put_back_keeps_its_place_and_age():
    pool = _WaitingPool([(10, 7, 0), (10, 8, 3)])
    image = pool.take(10)
    assert image == (7, 0)
    pool.put_back(10, image)  # a sequence backed off: image 7, drawn in window 0, waits on
    assert pool.oldest_from_before(1) == 10
    assert pool.items() == [(10, 7, 0), (10, 8, 3)]


def test_exact_fit_oldest_waiting_image_is_forced_out():
    # Keep 5 waiting, but the image drawn in window 0 has waited max_wait=2 windows.
    waiting = [(10, 0, 0)] + [(10, i, 2) for i in range(1, 5)]
    bins, still = exact_fit(waiting, BinLimits(100, 8), window=2, keep_waiting=5, max_wait=2)
    assert [b.items[0] for b in bins] == [0]
    assert all(w == 2 for _, _, w in still)


def test_best_fit_beats_next_fit_on_mixed_sizes():
    rng = np.random.default_rng(0)
    sizes = rng.integers(16, 577, size=2000)
    limits = BinLimits(1024, 64)
    best = pack(sizes, np.arange(2000), limits, "best_fit")
    nxt = pack(sizes, np.arange(2000), limits, "next_fit")
    assert len(best) < len(nxt)
    assert sizes.sum() / (len(best) * 1024) > 0.99
