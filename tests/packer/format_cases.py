"""Real files of every raster format the installed Pillow writes, hand-made files of the
formats it only reads, broken files, and files that are not images: the corpus a folder
listing, the decoder and a whole pack must get through without a traceback or a line on
stderr.

`tiny_image_files()` makes one small file per writable format (in the first mode the
format accepts), `READ_ONLY_FORMATS` builds the read-only ones (PSD, XPM, CUR, FITS,
FLI); `write_format_corpus(dir)` writes those, the odd cases of
`image_cases.ODD_CASES`, a few hand-made ones, and stray non-image files as an
ImageFolder, and returns what each file is (`Expected`).
"""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.packer.image_cases import ODD_CASES, encode, photo_jpeg, png_header, quadrant_pattern

# Modes tried in order until the format's writer accepts one.
_WRITE_MODES = ("RGB", "L", "1", "P", "RGBA")


def tiny_image(fmt: str, **params: object) -> bytes | None:
    """A 24x16 gradient written as `fmt`, or None when the installed Pillow cannot write
    it (no save handler, or no mode it takes)."""
    pixels = (np.arange(16 * 24 * 3).reshape(16, 24, 3) % 251).astype(np.uint8)
    image = Image.fromarray(pixels)
    for mode in _WRITE_MODES:
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.convert(mode).save(buffer, fmt, **params)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return buffer.getvalue()
    return None


def tiny_image_files() -> dict[str, bytes]:
    """{".ext": bytes} for every extension Pillow registers for a format it can write."""
    files = {}
    for ext, fmt in sorted(Image.registered_extensions().items()):
        if fmt in Image.SAVE and (data := tiny_image(fmt)) is not None:
            files[ext] = data
    return files


def psd_rgb(width: int = 24, height: int = 16) -> bytes:
    """A minimal uncompressed 8-bit RGB Photoshop file (Pillow reads PSD, never writes it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    planes = quadrant_pattern(width, height).transpose(2, 0, 1).tobytes()
    # colour mode data, image resources, layer and mask info: all empty; then raw planes
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def xpm_pixmap(width: int = 24, height: int = 16) -> bytes:
    """The quadrant pattern as an X11 pixmap (text: one character per pixel); Pillow
    reads XPM, never writes it."""
    keys: dict[tuple[int, ...], str] = {}
    rows = []
    for row in quadrant_pattern(width, height):
        for pixel in row:
            keys.setdefault(tuple(int(v) for v in pixel), "abcd"[len(keys) % 4])
        rows.append("".join(keys[tuple(int(v) for v in pixel)] for pixel in row))
    palette = [f'"{key} c #{r:02x}{g:02x}{b:02x}"' for (r, g, b), key in keys.items()]
    lines = [f'"{width} {height} {len(keys)} 1"', *palette, *(f'"{row}"' for row in rows)]
    return ("/* XPM */\nstatic char *image[] = {\n" + ",\n".join(lines) + "\n};\n").encode()


def windows_cursor(side: int = 16) -> bytes:
    """A Windows cursor: an ICO of one BMP entry whose type field says 2 (cursor)."""
    image = Image.fromarray(quadrant_pattern(side, side))
    data = bytearray(encode(image, "ICO", sizes=[(side, side)], bitmap_format="bmp"))
    data[2:4] = struct.pack("<H", 2)
    return bytes(data)


def fits_gradient(width: int = 24, height: int = 16) -> bytes:
    """An 8-bit FITS image: 80-character header cards padded to 2880 bytes, then pixels."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        f"NAXIS1  = {width:20d}",
        f"NAXIS2  = {height:20d}",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).encode()
    pixels = (np.arange(width * height) % 251).astype(np.uint8).tobytes()
    return header.ljust(2880, b" ") + pixels + b"\0" * (-len(pixels) % 2880)


def fli_animation(width: int = 24, height: int = 16) -> bytes:
    """A one-frame FLC animation: the 128-byte header, then a frame of one FLI_COPY chunk
    (raw palette indices; no palette chunk, so Pillow's default grey ramp)."""
    pixels = (np.arange(width * height) % 251).astype(np.uint8).tobytes()
    chunk = struct.pack("<IH", 6 + len(pixels), 16) + pixels
    frame = struct.pack("<IHH8x", 16 + len(chunk), 0xF1FA, 1) + chunk
    header = struct.pack("<IHHHHHHI", 128 + len(frame), 0xAF12, 1, width, height, 8, 0, 70)
    return header.ljust(128, b"\0") + frame


# Read-only formats (Pillow opens them, never writes them), made by hand: extension ->
# builder. With the writable formats of `tiny_image_files`, every format the decoder opens.
READ_ONLY_FORMATS = {
    ".psd": psd_rgb,
    ".xpm": xpm_pixmap,
    ".cur": windows_cursor,
    ".fits": fits_gradient,
    ".fli": fli_animation,
}


def animated_gif() -> bytes:
    frames = [Image.new("P", (20, 12), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def mpo_two_frames() -> bytes:
    image = Image.fromarray(quadrant_pattern(24, 16))
    return encode(image, "MPO", save_all=True, append_images=[image])


def tiff_16_bit() -> bytes:
    return encode(Image.fromarray(np.tile(np.arange(0, 65535, 2048, np.uint16), (8, 1))), "TIFF")


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose EXIF names a 100-byte description past its end: Pillow warns "Tag
    data larger than file" and reads the image anyway."""
    tiff = (
        b"II*\x00"
        + struct.pack("<IH", 8, 1)
        + struct.pack("<HHII", 0x010E, 2, 100, 60)
        + struct.pack("<I", 0)
    )
    image = Image.fromarray(quadrant_pattern(24, 16))
    return encode(image, "JPEG", exif=b"Exif\x00\x00" + tiff)


def tiff_with_too_many_samples(samples: int = 9) -> bytes:
    """An 8x8 uncompressed RGB TIFF that declares `samples` samples per pixel. Pillow
    refuses it at open, after logging "More samples per pixel than can be decoded: 9"
    (logger.error, which prints to stderr where logging is not configured)."""
    width = height = 8
    pixels = bytes(i % 251 for i in range(width * height * samples))
    entries = [  # (tag, type, count, value); type 3 SHORT, 4 LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, samples, 0),  # BitsPerSample: an array, its offset filled in below
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, 0),  # StripOffsets: filled in below
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 2 * samples
    values = {258: bits_at, 273: pixels_at}
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, values.get(tag, value))
        for tag, kind, count, value in entries
    )
    bits = struct.pack(f"<{samples}H", *([8] * samples))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bits + pixels


def jpeg_tiff_with_a_stray_marker() -> bytes:
    """A JPEG-compressed TIFF with one byte of its scan set to 0xFF, making a marker
    libjpeg does not know: libtiff's JPEG codec prints "JPEGLib: Unsupported marker
    type 0x.." to stderr, and the image still decodes."""
    pixels = (np.arange(32 * 32 * 3).reshape(32, 32, 3) % 251).astype(np.uint8)
    data = bytearray(encode(Image.fromarray(pixels), "TIFF", compression="jpeg"))
    with Image.open(io.BytesIO(bytes(data))) as image:
        start = image.tag_v2[273][0]
        end = start + image.tag_v2[279][0]
    sos = data.index(b"\xff\xda", start)
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    # The first byte from the middle of the scan whose neighbours keep FF xx a lone
    # marker of an unassigned type (0x02-0xBF), not a stuffed byte or a restart.
    position = next(
        p
        for p in range((scan + end) // 2, end - 2)
        if 0x02 <= data[p + 1] <= 0xBF and data[p - 1] != 0xFF and data[p] != 0xFF
    )
    data[position] = 0xFF
    return bytes(data)


def webdataset_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = photo_jpeg(16, 16)
        info = tarfile.TarInfo("000.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def parquet_file() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image": pa.array([photo_jpeg(16, 16)], pa.binary())}), sink)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class Expected:
    """What must become of one corpus file: "packed", "rejected" (with `reason`, from
    the header scan or the fill) or "skipped" (counted under its extension)."""

    outcome: str
    reason: str | None = None


# Hand-made cases: relative path -> (bytes builder, expected outcome)
_HAND_MADE = {
    "formats/photoshop.psd": (psd_rgb, Expected("packed")),
    "formats/pixmap.xpm": (xpm_pixmap, Expected("packed")),
    "formats/pointer.cur": (windows_cursor, Expected("packed")),
    "formats/sky.fits": (fits_gradient, Expected("packed")),
    "formats/frames.fli": (fli_animation, Expected("packed")),
    "formats/png_named.tga": (
        lambda: encode(Image.new("RGB", (20, 12)), "PNG"),
        Expected("packed"),
    ),
    "formats/animated.gif": (animated_gif, Expected("packed")),
    "formats/two_frames.mpo": (mpo_two_frames, Expected("packed")),
    "formats/gray16.tiff": (tiff_16_bit, Expected("packed")),
    "odd/corrupt_exif.jpg": (corrupt_exif_jpeg, Expected("packed")),
    # A message Pillow logs (at the header) and one libtiff prints (at the decode).
    "odd/too_many_samples.tif": (tiff_with_too_many_samples, Expected("rejected", "not_an_image")),
    "odd/stray_marker.tif": (jpeg_tiff_with_a_stray_marker, Expected("packed")),
    "odd/zero_bytes.png": (lambda: b"", Expected("rejected", "empty")),
    "odd/text_named.jpg": (
        lambda: b"hello, not a picture\n" * 4,
        Expected("rejected", "not_an_image"),
    ),
    "odd/text_named.tga": (  # a name unlocks a weak plugin, which still checks the bytes
        lambda: b"hello, not a picture\n" * 4,
        Expected("rejected", "not_an_image"),
    ),
    "odd/bomb_header.png": (
        lambda: png_header(30_000, 30_000),
        Expected("rejected", "decompression_bomb"),
    ),
    "stray/notes.txt": (lambda: b"three\nlines\nhere\n", Expected("skipped")),
    "stray/README": (lambda: b"no extension", Expected("skipped")),
    "stray/shard.tar": (webdataset_tar, Expected("skipped")),
    "stray/table.parquet": (parquet_file, Expected("skipped")),
    "stray/document.pdf": (lambda: tiny_image("PDF") or b"%PDF-1.4", Expected("skipped")),
}


def write_format_corpus(directory: Path, image_extensions: tuple[str, ...]) -> dict[str, Expected]:
    """Write the corpus under `directory` as an ImageFolder; {relative path: Expected}.

    Files of every writable format go to formats/: packed when the listing takes their
    extension (`image_extensions`), else skipped. The odd images of image_cases go to
    odd/ with their reasons.
    """
    directory = Path(directory)
    cases: dict[str, tuple[bytes, Expected]] = {}
    for ext, data in tiny_image_files().items():
        packed = ext in image_extensions
        cases[f"formats/tiny{ext}"] = (data, Expected("packed" if packed else "skipped"))
    for relative, (build, reason) in ODD_CASES.items():
        name = relative.replace("/", "_")
        expected = Expected("packed") if reason is None else Expected("rejected", reason)
        cases[f"odd/{name}"] = (build(), expected)
    for relative, (build, expected) in _HAND_MADE.items():
        cases[relative] = (build(), expected)
    for relative, (data, _) in cases.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {relative: expected for relative, (_, expected) in cases.items()}
