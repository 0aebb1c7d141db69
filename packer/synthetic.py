"""Synthetic data for benchmarks, tests and simulation: image sizes without images, and
photo-like pixels (`natural_photo`).

`imagenet_like_index` mimics ImageNet-1k's size spread: most images have a 500 px long
side at 4:3 or 3:2 (landscape twice as often as portrait), the rest spread log-normally
from under 100 px to a few thousand, with aspect ratios from 1:2 to 3:1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from packer.index.image_index import ImageIndex
from packer.index.table import image_keys

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


def synthetic_index(widths: np.ndarray, heights: np.ndarray, num_classes: int = 10) -> ImageIndex:
    """An index (the `packer.index` columns, in memory) for images of the given sizes."""
    return ImageIndex.from_table(synthetic_table(widths, heights, num_classes))


def synthetic_table(widths: np.ndarray, heights: np.ndarray, num_classes: int = 10) -> pa.Table:
    """The index table of images 0, 1, ... of the given sizes."""
    n = len(widths)
    ids = [f"synthetic/{i:08d}.jpg" for i in range(n)]
    return pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "uri": pa.array(ids, pa.string()),
            "offset": pa.array(np.full(n, -1, np.int64)),
            "length": pa.array(np.full(n, -1, np.int64)),
            "source_row": pa.array(np.full(n, -1, np.int64)),
            "label": pa.array(np.arange(n, dtype=np.int64) % num_classes),
            "width": pa.array(np.asarray(widths, np.int32)),
            "height": pa.array(np.asarray(heights, np.int32)),
            "key": pa.array(image_keys(ids), pa.uint64()),
            "error": pa.array([None] * n, pa.string()),
            "detail": pa.array([None] * n, pa.string()),
            "notes": pa.array([None] * n, pa.string()),
        }
    )


def imagenet_like_index(n: int, seed: int = 0) -> ImageIndex:
    return synthetic_index(*imagenet_like_sizes(n, seed))


def natural_photo(width: int, height: int, seed: int) -> np.ndarray:
    """Photo-like [height, width, 3] uint8: 1/f noise (natural images' spectrum) shared
    across channels, hard-edged discs, and sensor noise. Flat colour would hide aliasing
    and compress unlike photos."""
    rng = np.random.default_rng(seed)
    freq = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    freq[0, 0] = 1.0

    def field() -> np.ndarray:
        phase = np.exp(2j * np.pi * rng.random(freq.shape))
        return np.fft.irfft2(phase / freq, s=(height, width)).astype(np.float32)

    shared = field()
    pixels = np.stack([0.8 * shared + 0.4 * field() for _ in range(3)], axis=-1)
    pixels = (pixels - pixels.mean()) / pixels.std() * 45 + 120
    yy, xx = np.ogrid[0:height, 0:width]
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.03, 0.2) * min(width, height)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        pixels[disc] = 0.6 * pixels[disc] + 0.4 * rng.uniform(0, 255, 3)
    pixels += rng.normal(0, 3, pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)
