"""Which formats a file opens as: by signature always, by name for the weakly signed."""

from __future__ import annotations

import pytest
from PIL import EpsImagePlugin, Image

from packer.image.formats import SIGNED_FORMATS, format_named_by, formats_to_try
from packer.image.imageio import decode_resized, read_header
from packer.image.reject import RejectedImage
from tests.packer.format_cases import READ_ONLY_FORMATS, tiny_image
from tests.packer.image_cases import encode, photo_jpeg


def _reason(function, *args) -> str:
    with pytest.raises(RejectedImage) as caught:
        function(*args)
    return caught.value.reason


def test_a_file_names_its_format_by_extension_in_any_case():
    assert format_named_by("/data/cat/001.TGA") == "TGA"
    assert format_named_by("s3://bucket/x/sky.fits") == "FITS"
    assert format_named_by("a/b.rgb") == "SGI"
    assert format_named_by("a/b.mpo") == "JPEG"  # multi-picture JPEG opens as JPEG
    assert format_named_by("a/b.jpeg") == "JPEG"


def test_containers_and_unknown_names_name_no_format():
    for name in ("/data/shard-0.tar", "/data/train.parquet", "a/README", "a/notes.txt"):
        assert format_named_by(name) is None, name


def test_formats_pillow_opens_without_pixels_are_never_named():
    # Stub plugins (HDF5, GRIB, BUFR, WMF), video (MPEG), PostScript without Ghostscript.
    for name in ("a.h5", "a.grib", "a.bufr", "a.wmf", "a.mpg"):
        assert format_named_by(name) is None, name
    assert (format_named_by("a.eps") == "EPS") == EpsImagePlugin.has_ghostscript()


def test_a_weakly_signed_format_opens_only_when_the_name_asks_for_it():
    tga = tiny_image("TGA")
    assert _reason(read_header, tga) == "not_an_image"  # bytes alone: never TGA
    assert read_header(tga, "TGA") == (24, 16)
    assert decode_resized(tga, 12, 8, "TGA").shape == (8, 12, 3)


def test_every_read_only_format_decodes_under_its_name():
    for ext, build in READ_ONLY_FORMATS.items():
        hint = format_named_by("image" + ext)
        width, height = read_header(build(), hint)
        assert decode_resized(build(), width, height, hint).shape == (height, width, 3), ext


def test_a_signature_wins_over_the_name():
    png = encode(Image.new("RGB", (20, 12), (10, 200, 30)), "PNG")
    assert read_header(png, "TGA") == (20, 12)
    assert decode_resized(png, 20, 12, "TGA")[0, 0].tolist() == [10, 200, 30]
    assert formats_to_try("TGA") == (*SIGNED_FORMATS, "TGA")
    assert formats_to_try("JPEG") == SIGNED_FORMATS


def test_text_named_as_a_weak_format_is_still_not_an_image():
    text = b"hello, not a picture\n" * 4
    assert _reason(read_header, text, "TGA") == "not_an_image"
    assert _reason(decode_resized, text, 8, 8, "PCX") == "not_an_image"


def test_a_hint_the_decoder_does_not_know_is_a_caller_bug():
    with pytest.raises(ValueError, match="format_hint"):
        read_header(photo_jpeg(), "PDF")
