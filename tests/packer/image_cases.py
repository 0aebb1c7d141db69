"""Odd and broken images, made in memory, for tests of decode, index and the pipeline.

Each builder returns the encoded bytes of one case; `write_odd_images` writes them all
as an ImageFolder (`good/` and `bad/` classes) and says which reason each must be
rejected with. Reasons are those of `packer.image.imageio.decode_resized`; a header scan
already rejects every bad case except `truncated`, whose header is intact.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

# Stored-frame quadrant colours of `quadrant_pattern`: top-left, top-right, bottom-left,
# bottom-right. Distinct under every flip and rotation, so orientation bugs show.
QUADRANT_COLORS = ((220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 240, 240))


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def quadrant_pattern(width: int, height: int) -> np.ndarray:
    """[height, width, 3] uint8 with four flat quadrants in QUADRANT_COLORS."""
    pixels = np.empty((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    pixels[:h2, :w2] = QUADRANT_COLORS[0]
    pixels[:h2, w2:] = QUADRANT_COLORS[1]
    pixels[h2:, :w2] = QUADRANT_COLORS[2]
    pixels[h2:, w2:] = QUADRANT_COLORS[3]
    return pixels


def exif_rotated_jpeg(orientation: int = 6, width: int = 64, height: int = 32) -> bytes:
    """A JPEG stored width x height with an EXIF orientation tag (6: shown turned 90° CW)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.fromarray(quadrant_pattern(width, height))
    return encode(image, "JPEG", quality=95, exif=exif)


def palette_png_with_transparency() -> bytes:
    """32x32 P-mode PNG: index 0 (red) is transparent everywhere but a blue 16x16 square."""
    image = Image.new("P", (32, 32), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.paste(1, (8, 8, 24, 24))
    return encode(image, "PNG", transparency=0)


def cmyk_jpeg() -> bytes:
    """32x32 CMYK JPEG of pure cyan (C=255): RGB (0, 255, 255)."""
    return encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=95)


def gray16_png(width: int = 256, height: int = 4) -> bytes:
    """16-bit grayscale PNG (opens as I;16), a horizontal 0..65535 gradient."""
    ramp = np.linspace(0, 65535, width).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (height, 1))), "PNG")


def grayscale_jpeg() -> bytes:
    """48x32 L-mode JPEG, left half black, right half white."""
    pixels = np.zeros((32, 48), np.uint8)
    pixels[:, 24:] = 255
    return encode(Image.fromarray(pixels), "JPEG", quality=95)


def bilevel_png() -> bytes:
    """32x32 mode-1 PNG, top half black, bottom half white."""
    image = Image.new("1", (32, 32), 0)
    image.paste(1, (0, 16, 32, 32))
    return encode(image, "PNG")


def la_png() -> bytes:
    """32x32 LA PNG: black, opaque on the left half, fully transparent on the right."""
    image = Image.new("LA", (32, 32), (0, 255))
    image.paste((0, 0), (16, 0, 32, 32))
    return encode(image, "PNG")


def rgba_png() -> bytes:
    """32x32 RGBA PNG of green at half opacity."""
    return encode(Image.new("RGBA", (32, 32), (0, 200, 0, 128)), "PNG")


def strip_png(width: int = 1, height: int = 5000) -> bytes:
    """A valid 1x5000 strip (an extreme aspect ratio, not an error)."""
    return encode(Image.new("RGB", (width, height), (10, 120, 200)), "PNG")


def webp_image() -> bytes:
    return encode(Image.fromarray(quadrant_pattern(40, 24)), "WEBP", quality=90)


def gif_image() -> bytes:
    return encode(Image.fromarray(quadrant_pattern(40, 24)).convert("P"), "GIF")


def float_tiff() -> bytes:
    """32x8 mode-F TIFF with values in [0, 1] (a horizontal ramp)."""
    ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32)
    return encode(Image.fromarray(np.tile(ramp, (8, 1))), "TIFF")


def photo_jpeg(width: int = 120, height: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)), "JPEG")


def truncated_jpeg() -> bytes:
    """A valid JPEG header whose entropy-coded data is cut in half."""
    data = photo_jpeg(160, 120)
    return data[: len(data) // 2]


def random_bytes(size: int = 4096, seed: int = 1234) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def png_header(width: int, height: int) -> bytes:
    """A PNG of just a signature, an IHDR claiming width x height, an empty IDAT and IEND.

    Claiming 100000x100000 makes a decompression bomb in 57 bytes, no allocation needed.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# relative path -> (builder, reason decode_resized rejects it with, or None if valid)
ODD_CASES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "good/exif_rotated.jpg": (exif_rotated_jpeg, None),
    "good/palette_transparent.png": (palette_png_with_transparency, None),
    "good/cmyk.jpg": (cmyk_jpeg, None),
    "good/gray16.png": (gray16_png, None),
    "good/grayscale.jpg": (grayscale_jpeg, None),
    "good/bilevel.png": (bilevel_png, None),
    "good/la.png": (la_png, None),
    "good/rgba.png": (rgba_png, None),
    "good/strip_1x5000.png": (strip_png, None),
    "good/photo.jpg": (photo_jpeg, None),
    "good/quadrants.webp": (webp_image, None),
    "good/quadrants.gif": (gif_image, None),
    "good/float_ramp.tiff": (float_tiff, None),
    "bad/truncated.jpg": (truncated_jpeg, "truncated"),
    "bad/random_bytes.jpg": (random_bytes, "not_an_image"),
    "bad/empty.jpg": (lambda: b"", "empty"),
    "bad/bomb.png": (lambda: png_header(100_000, 100_000), "decompression_bomb"),
    "bad/zero_width.png": (lambda: png_header(0, 64), "bad_dimensions"),
    "bad/too_wide.png": (lambda: png_header(70_000, 1), "bad_dimensions"),
}


def write_odd_images(directory: Path) -> dict[str, str | None]:
    """Write every case to directory/<class>/<name>.<ext>: {relative path: reason or None}."""
    directory = Path(directory)
    expected: dict[str, str | None] = {}
    for relative, (build, reason) in ODD_CASES.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build())
        expected[relative] = reason
    return expected
