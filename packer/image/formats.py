"""Which Pillow formats the decoder opens a file as: by its signature, or by its name.

Formats whose files start with a signature of 4 bytes or more (`SIGNED_FORMATS`: JPEG,
PNG, WebP, TIFF...) are always tried: bytes with no name (a WebDataset member, a Parquet
cell) or a wrong one are still recognised. Every other format the installed Pillow
decodes has a weak signature or none (TGA has none; PCX, SGI, CUR, FLI check 2-4 bytes;
FITS and XPM are text), so random bytes would pass for one; such a format is tried only
when the file's own name asks for it (`format_named_by`): "scans/0001.tga" is tried as
every signed format, then as TGA.

    format_named_by("/data/cat/001.TGA")    -> "TGA"
    format_named_by("/data/cat/001.rgb")    -> "SGI"
    format_named_by("/data/shard-0.tar")    -> None  (a container, not an image's name)
    formats_to_try("TGA")                   -> SIGNED_FORMATS + ("TGA",)

Left out, because the installed Pillow opens them but cannot give their pixels: stub
plugins (BUFR, GRIB, HDF5, and WMF off Windows: a header parser whose pixels need a
handler this project never registers), MPEG (video: the plugin reads a frame size and
has no decoder), and EPS unless Ghostscript is installed. Formats Pillow registers no
extension for (IMT, MCIDAS, SPIDER, XVTHUMB) have no name to ask for them.
"""

from __future__ import annotations

import posixpath

from PIL import EpsImagePlugin, Image, ImageFile

# Raster formats whose files start with a signature of 4 bytes or more. Restricting
# Image.open to these keeps random bytes from being "identified" by a plugin with a weak
# signature check.
_SIGNED = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "BMP",
    "TIFF",
    "PPM",
    "AVIF",
    "JPEG2000",
    "QOI",
    "DDS",
    "ICO",
    "ICNS",
    "PSD",
    "BLP",
    "MSP",
    "XBM",
)
# Load every plugin once, at import, so no thread races Pillow's lazy plugin import and
# Image.open never meets a format name it does not know (that raises KeyError).
Image.init()
SIGNED_FORMATS = tuple(name for name in _SIGNED if name in Image.OPEN)
# Opened by Pillow but without pixels to give (see the module docstring).
_NO_PIXELS = ("MPEG",) + (() if EpsImagePlugin.has_ghostscript() else ("EPS",))
# Registered under its own name, opened by the JPEG plugin (multi-picture JPEG).
_OPENED_AS = {"MPO": "JPEG"}


def _gives_pixels(name: str) -> bool:
    """True for a format the installed Pillow opens and decodes to pixels."""
    name = _OPENED_AS.get(name, name)
    if name not in Image.OPEN or name in _NO_PIXELS:
        return False
    factory = Image.OPEN[name][0]
    return not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))


# {".tga": "TGA", ".jpg": "JPEG", ".mpo": "JPEG", ...}: every extension Pillow registers
# for a format it decodes, to the format Image.open is asked to try.
FORMAT_OF_EXTENSION: dict[str, str] = {
    extension: _OPENED_AS.get(name, name)
    for extension, name in sorted(Image.registered_extensions().items())
    if _gives_pixels(name)
}


def format_named_by(path: str) -> str | None:
    """The format a file's extension names ("a/B.TGA" -> "TGA"), None for any other name."""
    return FORMAT_OF_EXTENSION.get(posixpath.splitext(path)[1].lower())


def formats_to_try(format_hint: str | None) -> tuple[str, ...]:
    """Image.open's formats, in order: every signed format, then the hinted one.

    Signed formats come first so that a PNG saved as "x.tga" still opens as PNG; a weak
    plugin then sees only bytes no signature claimed.
    """
    if format_hint is None or format_hint in SIGNED_FORMATS:
        return SIGNED_FORMATS
    if format_hint not in FORMAT_OF_EXTENSION.values():
        raise ValueError(f"format_hint {format_hint!r} is not a format the decoder opens")
    return (*SIGNED_FORMATS, format_hint)
