import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.packing import BinLimits, lower_bound_sequences, pack, split_carry


def test_best_fit_decreasing_worked_example():
    bins = pack(np.array([6, 5, 4, 3, 2]), np.arange(5), BinLimits(10, 8), "best_fit")
    assert [b.items for b in bins] == [[0, 2], [1, 3, 4]]
    assert [b.used for b in bins] == [10, 10]


def test_next_fit_worked_example():
    bins = pack(np.array([6, 5, 4, 3, 2]), np.arange(5), BinLimits(10, 8), "next_fit")
    assert [b.items for b in bins] == [[0], [1, 2], [3, 4]]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 64), min_size=0, max_size=120),
    capacity=st.integers(64, 200),
    max_images=st.integers(1, 8),
    strategy=st.sampled_from(["best_fit", "next_fit"]),
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


def test_best_fit_beats_next_fit_on_mixed_sizes():
    rng = np.random.default_rng(0)
    sizes = rng.integers(16, 577, size=2000)
    limits = BinLimits(1024, 64)
    best = pack(sizes, np.arange(2000), limits, "best_fit")
    nxt = pack(sizes, np.arange(2000), limits, "next_fit")
    assert len(best) < len(nxt)
    assert sizes.sum() / (len(best) * 1024) > 0.99
