"""Resize and orient decoded pixel arrays: the step between the decoder and the patch slot.

The decoder hands over an array already reduced by the JPEG's DCT scale (1/2, 1/4, 1/8)
to at most twice the target on its larger axis, so the resize left is mostly a small
ratio. `resize_pixels` picks OpenCV's filter by that ratio r (source / target, the larger
of the two axes):

- r >= 2: area averaging (INTER_AREA), antialiased for any ratio;
- 1.5 <= r < 2: bilinear up to exactly twice the target, then a 2x2 box average (OpenCV's
  integer INTER_AREA path): bilinear alone at such ratios skips parts of some pixels
  and aliases, while this costs one more cheap pass;
- r < 1.5, or any axis upscaled: bilinear (INTER_LINEAR), which reads every source pixel.

A 500x375 photo bound for 320x240 is decoded whole (1/2 would give 250x188, too small),
r = 1.5625, so it goes 500x375 -> 640x480 (bilinear) -> 320x240 (2x2 box).

OpenCV's resize gives the same bytes on every run and thread count (each output row is
computed alone); its pool is set to one thread at import, because the packer already
runs one image per core and a second pool per worker would only oversubscribe them.
OpenCV does not promise INTER_LINEAR bit-exact across builds and CPU instruction sets
(INTER_LINEAR_EXACT does, but costs several times as much), so a batch regenerated on a
machine with another OpenCV build may differ by one level in places; the same machine
and wheels give the same bytes.
"""

from __future__ import annotations

import cv2
import numpy as np

cv2.setNumThreads(1)

# Above this ratio bilinear alone aliases visibly; see the module docstring.
_BOX_AFTER_BILINEAR_FROM = 1.5
_AREA_FROM = 2.0


def resize_pixels(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W] or [H, W, C] uint8 -> [height, width(, C)] uint8; the input if already that size."""
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected [H, W] or [H, W, C] uint8, got {pixels.dtype} {pixels.shape}")
    src_h, src_w = pixels.shape[:2]
    if (src_w, src_h) == (width, height):
        return pixels
    ratio_x, ratio_y = src_w / width, src_h / height
    ratio = max(ratio_x, ratio_y)
    if min(ratio_x, ratio_y) < 1.0 or ratio < _BOX_AFTER_BILINEAR_FROM:
        out = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
    elif ratio < _AREA_FROM:
        doubled = cv2.resize(pixels, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        out = cv2.resize(doubled, (width, height), interpolation=cv2.INTER_AREA)
    else:
        out = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    # OpenCV drops a trailing channel axis of size 1.
    return out.reshape((height, width, *pixels.shape[2:]))


def orient_pixels(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to [H, W(, C)] as Pillow's exif_transpose does (a view).

    Orientation 6 (the camera turned clockwise) rotates 90 degrees clockwise: the stored
    top-left corner ends at the top right, and a [32, 64] array becomes [64, 32].
    """
    if orientation == 2:  # mirrored left-right
        return pixels[:, ::-1]
    if orientation == 3:  # turned 180 degrees
        return pixels[::-1, ::-1]
    if orientation == 4:  # mirrored top-bottom
        return pixels[::-1]
    if orientation == 5:  # transposed across the main diagonal
        return pixels.swapaxes(0, 1)
    if orientation == 6:  # rotate 90 degrees clockwise
        return pixels.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:  # transposed across the anti-diagonal
        return pixels.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:  # rotate 90 degrees counter-clockwise
        return pixels.swapaxes(0, 1)[::-1]
    return pixels
