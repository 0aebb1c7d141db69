"""Patchify and unpatchify: exact inverses, in the contract's (py, px, channel) order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.image.patchify import patch_coordinates, patchify, unpatchify


@settings(max_examples=60, deadline=None)
@given(
    grid_h=st.integers(1, 6),
    grid_w=st.integers(1, 6),
    patch_size=st.sampled_from([1, 2, 4, 8, 16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_unpatchify_inverts_patchify_exactly(grid_h, grid_w, patch_size, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (grid_h * patch_size, grid_w * patch_size, 3), np.uint8)
    patches = patchify(image, patch_size)
    assert patches.shape == (grid_h * grid_w, patch_size * patch_size * 3)
    assert patches.dtype == np.uint8
    np.testing.assert_array_equal(unpatchify(patches, grid_h, grid_w, patch_size), image)


def test_patchify_into_a_slot_of_a_sequence_writes_the_same_patches_there():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), np.uint8)
    sequence = np.zeros((10, 16 * 16 * 3), np.uint8)
    returned = patchify(image, 16, out=sequence[2:8])
    np.testing.assert_array_equal(sequence[2:8], patchify(image, 16))
    assert np.shares_memory(returned, sequence)
    assert not sequence[:2].any() and not sequence[8:].any()  # nothing outside the slot


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((5, 768), np.uint8),
        np.zeros((6, 768), np.int16),
        np.zeros((6, 1536), np.uint8)[:, ::2],
    ],
    ids=["wrong-count", "wrong-dtype", "not-contiguous"],
)
def test_patchify_rejects_an_out_array_the_patches_do_not_fit(out):
    with pytest.raises(ValueError, match="out must be"):
        patchify(np.zeros((32, 48, 3), np.uint8), 16, out=out)


def test_worked_case_patch_four_of_a_2x3_grid_holds_its_block_in_py_px_c_order():
    # A 32x48 image at p=16 is a 2x3 grid; patch 4 (row 1, col 1) covers rows 16..31
    # and columns 16..31. Pixel values encode their own position so order errors show.
    ys, xs, cs = np.meshgrid(np.arange(32), np.arange(48), np.arange(3), indexing="ij")
    image = ((ys * 7 + xs * 3 + cs * 101) % 256).astype(np.uint8)
    patches = patchify(image, 16)
    assert patches.shape == (6, 768)
    patch = patches[4]
    # Flat index (py * 16 + px) * 3 + c holds image[16 + py, 16 + px, c].
    assert patch[0] == image[16, 16, 0]
    assert patch[1] == image[16, 16, 1]
    assert patch[3] == image[16, 17, 0]
    assert patch[16 * 3] == image[17, 16, 0]
    assert patch[(5 * 16 + 9) * 3 + 2] == image[21, 25, 2]
    np.testing.assert_array_equal(patch, image[16:32, 16:32].reshape(-1))
    # Row-major over the grid: patch 2 is row 0, col 2.
    np.testing.assert_array_equal(patches[2], image[0:16, 32:48].reshape(-1))


def test_patch_coordinates_are_row_major_int16():
    rows, cols = patch_coordinates(2, 3)
    assert rows.dtype == np.int16 and cols.dtype == np.int16
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert cols.tolist() == [0, 1, 2, 0, 1, 2]


def test_patch_coordinates_match_patchify_order():
    image = np.zeros((3 * 4, 5 * 4, 3), np.uint8)
    rows_px, cols_px = np.meshgrid(np.arange(12), np.arange(20), indexing="ij")
    image[..., 0] = rows_px // 4
    image[..., 1] = cols_px // 4
    patches = patchify(image, 4)
    rows, cols = patch_coordinates(3, 5)
    np.testing.assert_array_equal(patches[:, 0], rows)
    np.testing.assert_array_equal(patches[:, 1], cols)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((30, 32, 3), np.uint8),  # height not a multiple of 16
        ((32, 33, 3), np.uint8),  # width not a multiple
        ((0, 32, 3), np.uint8),  # empty
        ((32, 32), np.uint8),  # no channel axis
        ((32, 32, 4), np.uint8),  # RGBA
        ((32, 32, 3), np.float32),  # not uint8
    ],
)
def test_patchify_rejects_images_it_cannot_cut_with_a_value_error(shape, dtype):
    with pytest.raises(ValueError):
        patchify(np.zeros(shape, dtype), 16)


def test_unpatchify_rejects_patches_that_do_not_fit_the_grid():
    with pytest.raises(ValueError, match="expected"):
        unpatchify(np.zeros((5, 768), np.uint8), 2, 3, 16)


def test_patchify_rejects_a_non_positive_patch_size():
    with pytest.raises(ValueError, match="patch_size"):
        patchify(np.zeros((16, 16, 3), np.uint8), 0)
