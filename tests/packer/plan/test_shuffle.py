"""The epoch's shuffle: a permutation computed per place, as strong as a full shuffle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.config import PackingConfig
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.plan.shuffle import EpochOrder
from packer.synthetic import imagenet_like_index


def _order(size: int, seed: int, epoch: int) -> np.ndarray:
    order = EpochOrder(size, seed, epoch)
    values = order.span(0, order.domain)
    return values[values < size]


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5000), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
def test_the_order_is_a_permutation_and_any_span_is_found_alone(size, seed, epoch):
    order = EpochOrder(size, seed, epoch)
    full = order.span(0, order.domain)
    assert sorted(full[full < size].tolist()) == list(range(size))
    assert order.domain < 2 * max(size, 2)
    start = size // 3
    assert np.array_equal(order.span(start, start + 50), full[start : start + 50])


def test_epochs_and_seeds_give_different_orders():
    a, b, c = _order(1000, 0, 0), _order(1000, 0, 1), _order(1000, 1, 0)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("shard_size", [200, 1000])
def test_the_images_of_one_shard_spread_over_the_whole_epoch(shard_size):
    # 100 shards: an index lists a shard's images as neighbouring rows. Each shard's
    # images should land in each tenth of the epoch as often as a full shuffle puts
    # them there: shard_size / 10 each, within the binomial spread.
    shards = 100
    n = shards * shard_size
    place = np.empty(n, np.int64)
    place[_order(n, seed=7, epoch=3)] = np.arange(n)
    tenth = place * 10 // n  # which tenth of the epoch each row lands in
    counts = np.stack(
        [
            np.bincount(tenth[s * shard_size : (s + 1) * shard_size], minlength=10)
            for s in range(shards)
        ]
    )
    expected = shard_size / 10
    spread = np.sqrt(shard_size * 0.1 * 0.9)
    assert counts.min() > 0  # every shard reaches every tenth of the epoch
    assert np.abs(counts - expected).max() < 5.5 * spread
    # Chi-square over all shards and tenths: about its degrees of freedom, as for a
    # uniform shuffle (mean 900, sd about 42).
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert 700 < chi2 < 1100
    # Neighbouring rows do not stay neighbours: consecutive rows land far apart.
    gaps = np.abs(np.diff(place))
    assert np.median(gaps) > n / 5


def test_the_planner_draws_each_plannable_image_once_in_shuffled_order():
    index = imagenet_like_index(2000, 4)
    planner = EpochPlanner(index, ConfigHistory.start(PackingConfig()), 0)
    rows = np.concatenate([layout.rows for layout in planner.iter_layouts()])
    assert sorted(rows.tolist()) == list(range(2000))
    assert np.median(np.abs(np.diff(rows))) > 300
