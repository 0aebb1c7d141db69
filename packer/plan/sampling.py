"""Per-image random draws: resolution, target patch grid, token-drop rate, kept tokens.

Every draw comes from a counter-based hash of (seed, epoch, image key, stream), so an
image's draws depend on nothing else: not the worker count, not the scheduling, not the
other images in its window. That is what lets the planner decide the whole layout from
image headers alone and lets the fill step re-derive the same kept tokens later.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from packer.config import PackingConfig

# Independent streams of draws per image.
_STREAM_RESOLUTION = 1
_STREAM_DROP_RATE = 2
_STREAM_KEPT_TOKENS = 3

_U64 = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64's finaliser: a bijective mix of 64-bit words, wrapping arithmetic.
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def uniform_draws(seed: int, epoch: int, keys: np.ndarray, stream: int) -> np.ndarray:
    """One uniform draw in (0, 1) per key, a pure function of (seed, epoch, key, stream)."""
    with np.errstate(over="ignore"):
        h = splitmix64(np.full(keys.shape, seed, dtype=np.uint64))
        h = splitmix64(h ^ _U64(epoch))
        h = splitmix64(h ^ _U64(stream))
        h = splitmix64(h ^ keys.astype(np.uint64))
    # The top 53 bits make a double; the half offset keeps it strictly inside (0, 1).
    return ((h >> _U64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sample_resolutions(config: PackingConfig, epoch: int, keys: np.ndarray) -> np.ndarray:
    """Each image's resolution r in [min_res, max_res] (float), uniform or truncnorm."""
    u = uniform_draws(config.seed, epoch, keys, _STREAM_RESOLUTION)
    lo, hi = float(config.min_res), float(config.max_res)
    if config.res_dist == "uniform":
        return lo + u * (hi - lo)
    # Inverse-CDF draw from N(mu, sigma) truncated to [-1, 1], then mapped onto [lo, hi].
    mu, sigma = config.res_mu, config.res_sigma
    cdf_lo = special.ndtr((-1.0 - mu) / sigma)
    cdf_hi = special.ndtr((1.0 - mu) / sigma)
    x = mu + sigma * special.ndtri(cdf_lo + u * (cdf_hi - cdf_lo))
    x = np.clip(x, -1.0, 1.0)
    return lo + (x + 1.0) * 0.5 * (hi - lo)


def target_grids(
    config: PackingConfig, widths: np.ndarray, heights: np.ndarray, resolutions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Patch grid (grid_h, grid_w) per image, keeping the aspect ratio to within one patch.

    `area`: grid_h * grid_w ~ (r / p)^2. A 600x400 image at r=256, p=16 wants 256 tokens
    at aspect 1.5: grid_h = round(sqrt(256 / 1.5)) = 13, grid_w = round(sqrt(256 * 1.5))
    = 20 (260 tokens). `side`: the longer side gets round(r / p) patches, 600x400 at
    r=256 gives grid_w = 16, grid_h = round(16 / 1.5) = 11.

    Every side is at least one patch and no image passes max_tokens_per_image: a 1x5000
    strip in area mode becomes a 1 x 576 grid at max_res 384, not 1 x 1697.
    """
    p = float(config.patch_size)
    w = widths.astype(np.float64)
    h = heights.astype(np.float64)
    aspect = w / h
    if config.res_mode == "area":
        tokens = (resolutions / p) ** 2
        grid_h = np.rint(np.sqrt(tokens / aspect))
        grid_w = np.rint(np.sqrt(tokens * aspect))
    else:
        long_side = np.maximum(np.rint(resolutions / p), 1.0)
        wide = aspect >= 1.0
        grid_w = np.where(wide, long_side, np.rint(long_side * aspect))
        grid_h = np.where(wide, np.rint(long_side / aspect), long_side)
    cap = config.max_tokens_per_image
    grid_h = np.clip(grid_h, 1, cap).astype(np.int64)
    grid_w = np.clip(grid_w, 1, cap).astype(np.int64)
    # Only extreme strips reach this: shorten the long side until the image fits the cap.
    grid_w = np.where(grid_h * grid_w > cap, np.maximum(cap // grid_h, 1), grid_w)
    grid_h = np.where(grid_h * grid_w > cap, np.maximum(cap // grid_w, 1), grid_h)
    return grid_h, grid_w


def drop_rates(
    config: PackingConfig, epoch: int, keys: np.ndarray, resolutions: np.ndarray
) -> np.ndarray:
    """The fraction of each image's tokens to drop, per the config's token_drop mode."""
    if config.token_drop == "none":
        return np.zeros(keys.shape, np.float64)
    if config.token_drop == "constant":
        return np.full(keys.shape, config.drop_rate, np.float64)
    if config.token_drop == "beta":
        u = uniform_draws(config.seed, epoch, keys, _STREAM_DROP_RATE)
        return config.drop_rate * special.betaincinv(config.drop_beta_a, config.drop_beta_b, u)
    # resolution: linear from drop_min_rate at min_res to drop_rate at max_res.
    span = max(config.max_res - config.min_res, 1)
    t = np.clip((resolutions - config.min_res) / span, 0.0, 1.0)
    return config.drop_min_rate + t * (config.drop_rate - config.drop_min_rate)


def kept_counts(num_tokens: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Tokens kept per image: n - round(rate * n), never fewer than one."""
    dropped = np.rint(rates * num_tokens).astype(np.int64)
    return np.maximum(num_tokens - dropped, 1)


def kept_token_indices(
    config: PackingConfig, epoch: int, key: int, num_tokens: int, num_kept: int
) -> np.ndarray:
    """Which of an image's tokens survive the drop: sorted row-major indices.

    For a 2x3 grid keeping 4 tokens this might be [0, 2, 3, 5]: the kept patches keep
    their original (row, col) = (0, 0), (0, 2), (1, 0), (1, 2).
    """
    if num_kept >= num_tokens:
        return np.arange(num_tokens, dtype=np.int64)
    rng = np.random.default_rng([config.seed, epoch, key, _STREAM_KEPT_TOKENS])
    return np.sort(rng.choice(num_tokens, size=num_kept, replace=False))


def plan_images(
    config: PackingConfig,
    epoch: int,
    keys: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
) -> dict[str, np.ndarray]:
    """All the per-image draws the planner needs, vectorised over a window of images."""
    resolutions = sample_resolutions(config, epoch, keys)
    grid_h, grid_w = target_grids(config, widths, heights, resolutions)
    num_tokens = grid_h * grid_w
    rates = drop_rates(config, epoch, keys, resolutions)
    return {
        "grid_h": grid_h,
        "grid_w": grid_w,
        "num_kept": kept_counts(num_tokens, rates),
    }
