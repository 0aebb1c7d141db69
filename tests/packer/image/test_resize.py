"""The array resize and orientation between the decoder and the patch slot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from packer.image.resize import orient_pixels, resize_pixels

# Pillow's transposes, which decode_resized applied before: orientation -> transpose.
PILLOW_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_equals_pillows_transpose_pixel_for_pixel(orientation):
    pixels = _noise(5, 7)
    expected = Image.fromarray(pixels)
    if orientation in PILLOW_TRANSPOSE:
        expected = expected.transpose(PILLOW_TRANSPOSE[orientation])
    np.testing.assert_array_equal(orient_pixels(pixels, orientation), np.asarray(expected))


@pytest.mark.parametrize(
    "source, target",
    [
        ((375, 500), (240, 320)),
        ((375, 500), (336, 448)),
        ((500, 750), (64, 96)),
        ((10, 20), (32, 48)),
    ],
)
def test_resize_gives_the_exact_target_shape_for_each_filter_range(source, target):
    out = resize_pixels(_noise(*source), target[1], target[0])
    assert out.shape == (*target, 3) and out.dtype == np.uint8


def test_grayscale_stays_two_dimensional():
    assert resize_pixels(_noise(100, 80, channels=0), 40, 50).shape == (50, 40)


def test_same_size_returns_the_input_untouched():
    pixels = _noise(16, 32)
    assert resize_pixels(pixels, 32, 16) is pixels


def test_a_flat_image_stays_flat_at_every_ratio():
    flat = np.full((375, 500, 3), (12, 130, 250), np.uint8)
    for width, height in [(448, 336), (320, 240), (96, 64), (600, 450)]:
        out = resize_pixels(flat, width, height)
        assert np.all(out == (12, 130, 250)), (width, height)


def test_downscale_between_one_and_a_half_and_two_averages_away_a_pixel_checkerboard():
    # A 1-pixel checkerboard is all Nyquist frequency: an antialiased 1.6x downscale must
    # bring it close to mid-grey, where bilinear sampling alone keeps stripes of contrast.
    yy, xx = np.mgrid[0:320, 0:480]
    board = (((yy + xx) % 2) * 255).astype(np.uint8)
    out = resize_pixels(board, 300, 200).astype(int)
    assert np.abs(out - 127.5).max() < 40


def test_resize_is_the_same_bytes_on_every_call():
    pixels = _noise(375, 500, seed=3)
    first = resize_pixels(pixels, 320, 240)
    for _ in range(3):
        assert resize_pixels(pixels.copy(), 320, 240).tobytes() == first.tobytes()


def test_non_positive_target_is_a_caller_error():
    with pytest.raises(ValueError, match="positive"):
        resize_pixels(_noise(4, 4), 0, 4)
