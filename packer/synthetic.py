"""Synthetic indexes: image sizes without images, for benchmarks, tests and simulation.

`imagenet_like_index` mimics ImageNet-1k's size spread: most images have a 500 px long
side at 4:3 or 3:2 (landscape twice as often as portrait), the rest spread log-normally
from under 100 px to a few thousand, with aspect ratios from 1:2 to 3:1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from packer.sampling import image_keys

_COMMON_ASPECTS = np.array([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3, 16 / 9])
_COMMON_WEIGHTS = np.array([0.42, 0.16, 0.08, 0.18, 0.08, 0.08])


def imagenet_like_sizes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(widths, heights) of n images drawn from an ImageNet-like distribution."""
    rng = np.random.default_rng(seed)
    common = rng.random(n) < 0.7
    aspect = np.where(
        common,
        rng.choice(_COMMON_ASPECTS, size=n, p=_COMMON_WEIGHTS),
        np.exp(rng.uniform(np.log(0.5), np.log(3.0), size=n)),
    )
    long_side = np.where(common, 500.0, np.clip(rng.lognormal(np.log(420), 0.6, n), 48, 4000))
    wide = aspect >= 1
    width = np.where(wide, long_side, long_side * aspect)
    height = np.where(wide, long_side / aspect, long_side)
    return (
        np.maximum(np.rint(width), 1).astype(np.int32),
        np.maximum(np.rint(height), 1).astype(np.int32),
    )


def synthetic_index(widths: np.ndarray, heights: np.ndarray, num_classes: int = 10) -> pa.Table:
    """An index table (the `packer.index` columns) for images of the given sizes."""
    n = len(widths)
    ids = [f"synthetic/{i:08d}.jpg" for i in range(n)]
    return pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "uri": pa.array(ids, pa.string()),
            "offset": pa.array(np.full(n, -1, np.int64)),
            "length": pa.array(np.full(n, -1, np.int64)),
            "row": pa.array(np.full(n, -1, np.int64)),
            "label": pa.array(np.arange(n, dtype=np.int64) % num_classes),
            "width": pa.array(np.asarray(widths, np.int32)),
            "height": pa.array(np.asarray(heights, np.int32)),
            "key": pa.array(image_keys(ids), pa.uint64()),
            "error": pa.array([None] * n, pa.string()),
            "detail": pa.array([None] * n, pa.string()),
            "notes": pa.array([None] * n, pa.string()),
        }
    )


def imagenet_like_index(n: int, seed: int = 0) -> pa.Table:
    return synthetic_index(*imagenet_like_sizes(n, seed))
