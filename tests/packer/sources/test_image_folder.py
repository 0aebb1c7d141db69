"""Image folder sources: class folder labels, ids and whole-file locations."""

from __future__ import annotations

from PIL import EpsImagePlugin

from packer.image.formats import format_named_by
from packer.image.imageio import decode_resized
from packer.image.reject import RejectedImage
from packer.sources import open_source
from packer.sources.image_folder import IMAGE_EXTENSIONS
from tests.packer import image_cases as cases
from tests.packer.format_cases import READ_ONLY_FORMATS, tiny_image_files
from tests.packer.sources.source_cases import bytes_by_id


def test_image_folder_labels_are_sorted_class_folder_indices(folder):
    source = open_source(str(folder))
    assert source.kind == "image_folder"
    assert source.class_names == ["checkers", "circles", "squares", "stripes"]
    records = source.records()
    assert len(records) == 12
    for record in records:
        assert record.label == source.class_names.index(record.image_id.split("/")[0])
        assert (record.offset, record.length, record.source_row) == (-1, -1, -1)
        assert record.uri == str(folder / record.image_id)


def test_image_folder_reader_returns_each_whole_file(folder):
    source = open_source(str(folder))
    for image_id, data in bytes_by_id(source).items():
        assert data == (folder / image_id).read_bytes()


def test_images_in_the_root_get_label_minus_one_and_nested_ones_their_class(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()  # empty class folder: still takes index 0, as torchvision
    (tmp_path / "loose.jpg").write_bytes(cases.photo_jpeg())
    (tmp_path / "b" / "deep" / "x.png").write_bytes(cases.strip_png(2, 3))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path))
    assert source.class_names == ["a", "b"]
    labels = {r.image_id: r.label for r in source.records()}
    assert labels == {"loose.jpg": -1, "b/deep/x.png": 1}


def _decodes(data: bytes, name: str) -> bool:
    try:
        return decode_resized(data, 8, 8, format_named_by(name)).shape == (8, 8, 3)
    except RejectedImage:
        return False


def test_the_listing_takes_exactly_the_extensions_whose_files_the_decoder_opens():
    # Decided by trying: a tiny file of every format the installed Pillow writes, under
    # every extension Pillow registers for it, decoded as the format its name says.
    # Not listed: not raster (PDF, PostScript without Ghostscript), write-only (Palm).
    files = tiny_image_files()
    assert {".png", ".jpg", ".dds", ".ico", ".qoi", ".jp2", ".pbm", ".tga"} <= set(files)
    decoded = {ext for ext, data in files.items() if _decodes(data, "image" + ext)}
    assert decoded == set(files) & set(IMAGE_EXTENSIONS)
    assert {".dds", ".ico", ".qoi", ".jp2", ".j2k", ".pbm", ".pnm", ".mpo"} <= decoded
    # Formats with a weak signature or none, read because the name asks for them.
    assert {".tga", ".pcx", ".sgi", ".rgb", ".bw", ".dib", ".im"} <= decoded
    assert not {".pdf", ".palm"} & set(IMAGE_EXTENSIONS)
    postscript = {".eps", ".ps"} <= set(IMAGE_EXTENSIONS)
    assert postscript == EpsImagePlugin.has_ghostscript()


def test_formats_pillow_only_reads_are_listed_and_decoded():
    for ext, build in READ_ONLY_FORMATS.items():
        assert ext in IMAGE_EXTENSIONS and _decodes(build(), "image" + ext), ext
