"""The validation split (packer/split.py): a pure function of (seed, image id)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from packer.index.image_index import ImageIndex
from packer.index.table import image_keys
from packer.plan.split import held_out, held_out_ids, split_index
from packer.synthetic import imagenet_like_index


def test_split_is_a_partition_of_the_index_and_keeps_its_metadata():
    index = imagenet_like_index(500).with_metadata({b"navit.source": b"somewhere"})
    train, val = split_index(index, 0.2, seed=3)
    train_ids = set(train.column("image_id").to_pylist())
    val_ids = set(val.column("image_id").to_pylist())
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(index.column("image_id").to_pylist())
    assert train.num_rows + val.num_rows == index.num_rows
    assert train.schema == index.schema and val.schema == index.schema  # metadata included


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3])
def test_held_out_share_is_the_fraction_within_binomial_spread(fraction):
    n = 4000
    index = imagenet_like_index(n)
    for seed in range(3):
        _, val = split_index(index, fraction, seed)
        spread = 4 * math.sqrt(n * fraction * (1 - fraction))  # 4 standard deviations
        assert abs(val.num_rows - n * fraction) < spread


def test_split_is_deterministic_and_depends_only_on_seed_and_image_id():
    index = imagenet_like_index(600)
    _, val = split_index(index, 0.1, seed=7)
    _, again = split_index(index, 0.1, seed=7)
    assert val.column("image_id").to_pylist() == again.column("image_id").to_pylist()
    # Another order, a subset, other images beside: each image keeps its side.
    ids = index.column("image_id").to_pylist()
    chosen = set(held_out_ids(ids, 0.1, seed=7))
    assert chosen == set(val.column("image_id").to_pylist())
    shuffled = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))][:250]
    extra = [f"other/{i}.jpg" for i in range(300)]
    assert set(held_out_ids(shuffled + extra, 0.1, seed=7)) - set(extra) == chosen & set(shuffled)


def test_another_seed_holds_out_other_images():
    ids = [f"img/{i}.jpg" for i in range(2000)]
    assert set(held_out_ids(ids, 0.1, 0)) != set(held_out_ids(ids, 0.1, 1))


def test_a_larger_fraction_holds_out_a_superset():
    keys = image_keys([f"img/{i}.jpg" for i in range(2000)])
    small, large = held_out(keys, 0.05, 2), held_out(keys, 0.2, 2)
    assert not (small & ~large).any()


def test_fraction_zero_holds_out_nothing():
    index = imagenet_like_index(100)
    train, val = split_index(index, 0.0, seed=0)
    assert val.num_rows == 0 and train.num_rows == 100


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), "0.1"])
def test_a_fraction_outside_0_to_1_is_an_error_naming_it(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        held_out(np.zeros(3, np.uint64), fraction, 0)


def test_an_empty_index_splits_into_two_empty_parts():
    index = imagenet_like_index(0)
    train, val = split_index(index, 0.1, 0)
    assert train.num_rows == val.num_rows == 0
    assert isinstance(train, ImageIndex)
