"""The validation split: which images a run holds out of training. Pure.

An image is held out when its uniform draw for the holdout stream, a function of
(seed, image key) alone (packer.index.table.image_key, a hash of the image id), falls
below `val_fraction`. So the split never depends on the other images, their order or
the machine: adding images to a data set moves none of the old ones across, and the
service (which streams only the training part) and `navit eval` (which evaluates only
the held-out part) agree on it from the index alone.

The held-out count is binomial, not exact: 400 images at val_fraction 0.1 hold out
about 40 (within a few of it), and each image's side is fixed by its id.
"""

from __future__ import annotations

import numpy as np

from packer.index.image_index import ImageIndex
from packer.index.table import image_keys
from packer.plan.sampling import uniform_draws

# The holdout's own stream of draws (packer.plan.sampling uses 1-3 for resolution, drop
# rate and kept tokens), at a fixed epoch: the split is the same in every epoch.
_STREAM_HOLDOUT = 0x5A11
_SPLIT_EPOCH = 0
_CHUNK = 1 << 20


def check_fraction(val_fraction: float) -> None:
    """A fraction in [0, 1): 0 holds nothing out, and training needs some images."""
    if not isinstance(val_fraction, int | float) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: must lie in [0, 1), got {val_fraction!r}")


def held_out(keys: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over `keys` (packer.index.table.image_key of each id): True = validation."""
    check_fraction(val_fraction)
    if seed < 0:
        raise ValueError(f"seed: must be non-negative, got {seed}")
    keys = np.asarray(keys, dtype=np.uint64)
    return uniform_draws(seed, _SPLIT_EPOCH, keys, _STREAM_HOLDOUT) < val_fraction


def held_out_ids(image_ids: list[str], val_fraction: float, seed: int) -> list[str]:
    """The ids among `image_ids` that the split holds out, in their order."""
    mask = held_out(image_keys(image_ids), val_fraction, seed)
    return [image_id for image_id, out in zip(image_ids, mask, strict=True) if out]


def split_index(index: ImageIndex, val_fraction: float, seed: int) -> tuple[ImageIndex, ImageIndex]:
    """(train, val): the parts of `index` (packer.index) kept for training and held out.

    Both are views sharing the index's resident columns and metadata (source, class
    names, cache path), so either part plans, packs and finds its reject ledger as the
    whole index would. The key hashes are drawn a million keys at a time; the mask and
    the row lists it gives are image-sized (about 10 bytes an image).
    """
    check_fraction(val_fraction)
    keys = index.columns.key if index.rows is None else index.columns.key[index.rows]
    mask = np.zeros(len(keys), bool)
    for start in range(0, len(keys), _CHUNK):
        mask[start : start + _CHUNK] = held_out(keys[start : start + _CHUNK], val_fraction, seed)
    held = np.flatnonzero(mask)
    train = index if not len(held) else index.view(np.flatnonzero(~mask))
    return train, index.view(held)
