"""Image bytes -> header size, and image bytes -> an RGB array at a planned size.

The planner decides every image's patch grid from its header alone, so `read_header` and
`decode_resized` must agree on what "the image's size" is: both apply the EXIF
orientation found in the header (tags read before any pixel data), and both reject the
same inputs with the same reason. A JPEG stored as 4000x3000 with orientation 6 (the
camera was turned) has header size (3000, 4000); decoding it for a 12x16 grid asks for
width 192, height 256 and gets a portrait array of shape [256, 192, 3].

Every failure is a `RejectedImage` with a short reason code, so the fill step can count
rejected images by reason instead of crashing a job on one bad file.

Which formats open: those with a signature always, any other the installed Pillow
decodes when the file's name asks for it (`format_hint`, see packer.image.formats).

JPEGs in RGB or L go from libjpeg-turbo (simplejpeg) straight into an array; every other
image is decoded by Pillow. Either way the array is resized by `packer.image.resize` (OpenCV),
except images with alpha, which Pillow resizes premultiplied.

Transparent pixels are composited on WHITE (the background most logos, icons and
screenshots with alpha were drawn for; black would make black-on-transparent art vanish).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from packer.image.formats import formats_to_try
from packer.image.reject import RejectedImage
from packer.image.resize import orient_pixels, resize_pixels
from packer.image.stderr_notes import stderr_as_notes

# Pillow's default decompression-bomb error limit (2 * Image.MAX_IMAGE_PIXELS), applied
# by us from the header whatever Pillow's global limit or the warning filters are.
MAX_IMAGE_PIXELS = 178_956_970
# Larger sides are not images any dataset means (and break int16 arithmetic downstream).
MAX_IMAGE_SIDE = 65_500

_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = frozenset((5, 6, 7, 8))
# JPEG start-of-frame markers (SOF0..SOF15 less DHT C4, JPG C8 and DAC CC).
_SOF_MARKERS = frozenset(
    (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
)

# Images with alpha only (the rest go through packer.image.resize): bilinear with Pillow's
# antialiasing (its support widens with the downscale factor), premultiplied by alpha.
_RESAMPLE = Image.Resampling.BILINEAR
# Downscale by an integer factor with a box filter first while the image is at least this
# many times the target; Pillow documents 3.0 as indistinguishable from a plain resize.
_REDUCING_GAP = 3.0


@contextmanager
def _failures_as_rejections() -> Iterator[None]:
    """Turn every failure inside the block into a RejectedImage with a reason."""
    try:
        yield
    except RejectedImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # A plugin's own check on a part of the image (an ICO entry, a TIFF tile, a GIF
        # frame larger than its screen).
        raise RejectedImage("decompression_bomb", _describe(error)) from error
    except Exception as error:  # any failure must be a reason, not a crash
        raise RejectedImage("decode_error", _describe(error)) from error


def read_header(data: bytes, format_hint: str | None = None) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (no pixel decode).

    `data` may be just a prefix of the file (the index reads the first 64 KiB); a prefix
    too short for the header fails as not_an_image and the caller may retry with more.
    `format_hint` is the format the file's name asks for (`formats.format_named_by`),
    tried after the formats with a signature; None for bytes without a name.
    """
    formats = formats_to_try(format_hint)
    # What the C libraries print meanwhile becomes the image's notes (stderr_notes).
    with stderr_as_notes(), _failures_as_rejections():
        image, orientation = _open(data, formats)
        width, height = image.size
        if orientation in _SWAPS_SIDES:
            width, height = height, width
        return width, height


def decode_resized(
    data: bytes, width: int, height: int, format_hint: str | None = None
) -> np.ndarray:
    """Decode, orient upright and resize to exactly [height, width, 3] uint8 RGB.

    `width` and `height` are the target in the upright (EXIF-applied) frame, as the
    planner computed from `read_header`. JPEGs decode at a reduced DCT scale (1/2, 1/4,
    1/8) when the target is small enough, so a 4000x3000 photo bound for 256x192 decodes
    at 500x375 and is then resized. `format_hint` as in `read_header`. Raises
    RejectedImage for every bad input, and ValueError only for a non-positive target or
    a hint the decoder does not know (caller bugs, not bad images).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    formats = formats_to_try(format_hint)
    # What the C libraries print meanwhile becomes the image's notes (stderr_notes).
    with stderr_as_notes(), _failures_as_rejections():
        image, orientation = _open(data, formats)
        # Resize in the stored frame, then orient the small result: cheaper than
        # orienting the full-size image and the same pixels.
        swap = orientation in _SWAPS_SIDES
        stored_w, stored_h = (height, width) if swap else (width, height)
        pixels = _decode_jpeg_scaled(data, image, stored_w, stored_h)
        if pixels is None:
            pixels = _decode_with_pillow(image, stored_w, stored_h)
        pixels = orient_pixels(resize_pixels(pixels, stored_w, stored_h), orientation)
        if pixels.ndim == 2:  # grayscale: resized as one channel, a third of the work
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        elif not (pixels.flags.c_contiguous and pixels.flags.writeable):
            pixels = np.array(pixels, dtype=np.uint8, order="C")
    if pixels.shape != (height, width, 3):  # pragma: no cover - a bug, not a bad image
        raise RejectedImage("decode_error", f"decoded to {pixels.shape}, want {height}x{width}")
    return pixels


def _dct_scale(size: tuple[int, int], target: tuple[int, int]) -> int:
    """Pillow's draft rule: the largest of 8, 4, 2, 1 keeping both sides >= the target.

    A 3000x2000 JPEG bound for 448x288 gets scale 4 (750x500): 1/8 would give 375x250.
    """
    most = min(size[0] // target[0], size[1] // target[1])
    return next((s for s in (8, 4, 2) if most >= s), 1)


def _decode_jpeg_scaled(
    data: bytes, image: Image.Image, width: int, height: int
) -> np.ndarray | None:
    """A baseline JPEG (RGB or L) decoded by libjpeg-turbo straight into an array.

    The same DCT scale and the same pixels as Pillow's draft + load (both are
    libjpeg-turbo's scaled IDCT with fancy upsampling), without Pillow's copy into and
    out of its own image memory. None for every other image, and for any JPEG that
    libjpeg-turbo decodes only with a warning: Pillow then decodes it as before (it
    skips recoverable warnings and names a truncation), so bad input behaves the same.
    """
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    scale = _dct_scale(image.size, (width, height))
    full_w, full_h = image.size
    gray = image.mode == "L"
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            "GRAY" if gray else "RGB",
            min_width=-(-full_w // scale),
            min_height=-(-full_h // scale),
            strict=True,
        )
    except ValueError:
        return None
    return pixels[:, :, 0] if gray else pixels


def _decode_with_pillow(image: Image.Image, width: int, height: int) -> np.ndarray:
    """[H, W] (gray) or [H, W, 3] uint8 from Pillow, for every image the JPEG path declines.

    Images with alpha are resized here by Pillow, which premultiplies by alpha, and then
    composited on white, so they come back at (width, height) already.
    """
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", (width, height))
    _load(image)
    image = _to_working_mode(image)
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.size != (width, height):
        image = image.resize((width, height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    return _to_rgb_array(image)


def _open(data: bytes, formats: tuple[str, ...]) -> tuple[Image.Image, int]:
    """Open lazily as one of `formats` and check the header: the image (pixels not
    loaded) and its orientation."""
    if not data:
        raise RejectedImage("empty", "no bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check fired (its global limit may be lowered, or warnings made
        # errors). Our limit decides: reopen without Pillow's check, then check ours.
        image = _open_unchecked(data, formats)
    except UnidentifiedImageError as error:
        # Pillow refuses a zero side as "cannot identify"; say what is really wrong.
        size = _sniff_size(data)
        if size is not None and min(size) == 0:
            raise RejectedImage("bad_dimensions", f"{size[0]}x{size[1]} has a zero side") from error
        raise RejectedImage(
            "not_an_image", f"not a recognised image format (starts with {data[:8].hex()})"
        ) from error
    except (EOFError, OSError, SyntaxError, ValueError) as error:
        # A plugin accepted the signature, then tripped over a short or broken header.
        raise RejectedImage("not_an_image", _describe(error)) from error
    width, height = image.size
    _check_dimensions(width, height)
    return image, _orientation(image)


def _open_unchecked(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    """Image.open's plugin loop without its decompression-bomb check (we apply our own).

    Only reached when Pillow's check fired, so some plugin accepted these bytes before.
    """
    prefix = data[:16]
    for name in formats:
        factory, accept = Image.OPEN[name]
        accepted = accept(prefix) if accept is not None else True
        if isinstance(accepted, str) or not accepted:  # a str is Pillow's "almost" warning
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise RejectedImage("not_an_image", f"no plugin opens it (starts with {data[:8].hex()})")


def _check_dimensions(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise RejectedImage("bad_dimensions", f"{width}x{height} has a zero side")
    if width * height > MAX_IMAGE_PIXELS:
        raise RejectedImage(
            "decompression_bomb",
            f"{width}x{height} = {width * height} pixels exceeds the limit of {MAX_IMAGE_PIXELS}",
        )
    if max(width, height) > MAX_IMAGE_SIDE:
        raise RejectedImage(
            "bad_dimensions", f"{width}x{height} has a side longer than {MAX_IMAGE_SIDE}"
        )


def _sniff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOF marker, read by hand; None if neither.

    Only used after Pillow failed, to tell a zero-sided PNG or JPEG from garbage.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(b"\xff\xd8"):
        return None
    # Walk the JPEG marker segments: FF xx, then a 2-byte big-endian length (which counts
    # itself) for every marker but the standalone ones, until a start-of-frame.
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            pos += 2
            continue
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation 1..8 from tags read with the header; 1 if none.

    PngImageFile.getexif decodes the whole image to look for an eXIf chunk after the
    pixel data; the base method reads only what Image.open already parsed, which is
    what both read_header and decode_resized must see to agree.
    """
    try:
        value = Image.Image.getexif(image).get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block means "no orientation"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except (EOFError, OSError, SyntaxError, ValueError) as error:
        message = str(error).lower()
        if isinstance(error, EOFError) or "truncated" in message or "end of" in message:
            raise RejectedImage("truncated", _describe(error)) from error
        raise RejectedImage("decode_error", _describe(error)) from error


def _to_working_mode(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> L, LA, RGB or RGBA, the modes resize handles (alpha included).

    Staying in L for grayscale makes the resize a third of the work; the alpha modes are
    resized premultiplied by Pillow and composited on white after the resize.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        if "transparency" in image.info and mode in ("L", "RGB"):
            # A tRNS colour key: pixels of that value are transparent.
            return image.convert("LA" if mode == "L" else "RGBA")
        return image
    if mode == "1":
        return image.convert("L")  # 0 -> 0, 1 -> 255
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode == "La":
        return image.convert("LA")
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(image, mode), "L")
    return image.convert("RGB")  # CMYK, YCbCr, RGBX, LAB, HSV


def _high_depth_to_uint8(image: Image.Image, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit int or float grayscale to 0..255, mapping full range to full range.

    I;16: v -> round(v * 255 / 65535), so a 0..65535 gradient spans 0..255 (clipping
    would make everything above 255 white). I: the same when its values pass 255 (a
    16-bit PNG some Pillow versions open as I), else taken as 8-bit. F: [0, 1] -> 0..255
    when it lies in [0, 1], else clipped to 0..255.
    """
    values = np.asarray(image)
    if mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    values = values.astype(np.int64)
    if mode == "I" and (values.size == 0 or values.max() <= 255):
        return np.clip(values, 0, 255).astype(np.uint8)
    values = np.clip(values, 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """LA or RGBA -> [H, W, 3] uint8, alpha composited on white."""
    pixels = np.asarray(image)
    color = pixels[:, :, :-1].astype(np.uint16)
    alpha = pixels[:, :, -1:].astype(np.uint16)
    # c * a/255 + 255 * (1 - a/255), rounded: a=0 gives 255 (white), a=255 gives c.
    out = (color * alpha + 255 * (255 - alpha) + 127) // 255
    out = out.astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
