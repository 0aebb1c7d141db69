"""Cut an image into square patches and put it back together, with reshapes only.

A patch is flattened in (py, px, channel) order and patches run row-major over the grid,
which is the order of the `patches` column of the packed batch (see packer.contract.schema). For
a 32x48 RGB image at p=16 the grid is 2x3; patch 4 is the block rows 16..31, columns
16..31, and its value at index (py * 16 + px) * 3 + c is image[16 + py, 16 + px, c].
"""

from __future__ import annotations

import numpy as np


def patchify(image: np.ndarray, patch_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """[H, W, 3] uint8 with H, W multiples of patch_size -> [(H/p)*(W/p), p*p*3] uint8.

    With `out` (a C-contiguous [(H/p)*(W/p), p*p*3] uint8 array, such as a slot of a
    packed sequence) the patches are written there in one copy and `out` is returned.
    """
    _check_patch_size(patch_size)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"patchify expects an [H, W, 3] image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"patchify expects a uint8 image, got dtype {image.dtype}")
    height, width, _ = image.shape
    if height == 0 or width == 0 or height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} (HxW) is not a positive multiple of "
            f"patch_size={patch_size}; resize it to the planned grid first"
        )
    p = patch_size
    grid_h, grid_w = height // p, width // p
    # [gh, p, gw, p, 3] -> [gh, gw, p, p, 3]: grid axes first, then in-patch (py, px, c).
    blocks = image.reshape(grid_h, p, grid_w, p, 3).transpose(0, 2, 1, 3, 4)
    if out is None:
        return np.ascontiguousarray(blocks).reshape(grid_h * grid_w, p * p * 3)
    expected = (grid_h * grid_w, p * p * 3)
    if out.shape != expected or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {expected}, got "
            f"{out.dtype} {out.shape}"
        )
    np.copyto(out.reshape(grid_h, grid_w, p, p, 3), blocks)
    return out


def unpatchify(patches: np.ndarray, grid_h: int, grid_w: int, patch_size: int) -> np.ndarray:
    """[grid_h*grid_w, p*p*3] -> [grid_h*p, grid_w*p, 3]; the exact inverse of patchify."""
    _check_patch_size(patch_size)
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"grid must be positive, got {grid_h}x{grid_w}")
    p = patch_size
    expected = (grid_h * grid_w, p * p * 3)
    if patches.shape != expected:
        raise ValueError(
            f"patches of shape {patches.shape} do not fit a {grid_h}x{grid_w} grid at "
            f"patch_size={p}: expected {expected}"
        )
    blocks = patches.reshape(grid_h, grid_w, p, p, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(blocks).reshape(grid_h * p, grid_w * p, 3)


def patch_coordinates(grid_h: int, grid_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int16 of every patch of a grid, row-major.

    A 2x3 grid gives rows [0, 0, 0, 1, 1, 1] and cols [0, 1, 2, 0, 1, 2].
    """
    if grid_h < 0 or grid_w < 0:
        raise ValueError(f"grid must be non-negative, got {grid_h}x{grid_w}")
    if max(grid_h, grid_w) > np.iinfo(np.int16).max + 1:
        raise ValueError(f"grid {grid_h}x{grid_w} has coordinates that do not fit int16")
    rows = np.repeat(np.arange(grid_h, dtype=np.int16), grid_w)
    cols = np.tile(np.arange(grid_w, dtype=np.int16), grid_h)
    return rows, cols


def _check_patch_size(patch_size: int) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer):
        raise ValueError(f"patch_size must be an integer, got {patch_size!r}")
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
