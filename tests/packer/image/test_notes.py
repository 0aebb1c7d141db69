"""Pillow's warnings become per-image notes, on every thread, never lines on stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from packer.image.imageio import read_header
from packer.image.notes import capture_notes, note_kind, notes_of
from tests.packer.format_cases import corrupt_exif_jpeg

REPO = Path(__file__).resolve().parents[3]


def test_note_kinds_name_what_pillow_warned_about():
    assert note_kind("Possibly corrupt EXIF data.  Expecting to read 8 bytes") == "corrupt_metadata"
    assert note_kind("Tag data larger than file. Skipping tag 270") == "corrupt_metadata"
    assert note_kind("Truncated File Read") == "truncated_read"
    assert (
        note_kind("Palette images with Transparency expressed in bytes should be converted")
        == "palette_transparency"
    )
    assert note_kind("Image size ...", Image.DecompressionBombWarning) == (
        "decompression_bomb_warning"
    )
    assert note_kind("something new") == "warning"


def test_each_thread_gets_its_own_images_notes_and_nothing_reaches_stderr(capfd):
    data = corrupt_exif_jpeg()

    def read(i: int):
        with notes_of(f"img-{i}") as notes:
            if i % 2 == 0:
                read_header(data)
        return notes

    with capture_notes(), ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, range(16)))
    for i, notes in enumerate(results):
        if i % 2:
            assert notes == []
        else:
            assert {(n.image_id, n.kind) for n in notes} == {(f"img-{i}", "corrupt_metadata")}
            assert "Skipping tag" in notes[0].detail
    assert capfd.readouterr().err == ""


def test_a_warning_outside_an_image_still_goes_where_it_went():
    with warnings.catch_warnings(record=True) as outside, capture_notes():
        warnings.warn("not about an image", UserWarning, stacklevel=1)
    assert [str(w.message) for w in outside] == ["not about an image"]


def test_a_pillow_log_record_outside_an_image_still_reaches_logging(caplog):
    logger = logging.getLogger("PIL.TiffImagePlugin")
    with capture_notes():
        logger.error("not about an image")
        with notes_of("a.tif") as notes:
            logger.error("about a.tif")
    logger.error("after the capture")
    assert [n.detail for n in notes] == ["about a.tif"]
    logged = [r.getMessage() for r in caplog.records if r.name == "PIL.TiffImagePlugin"]
    assert logged == ["not about an image", "after the capture"]


def test_pillows_log_records_are_notes_even_before_any_plugin_was_imported():
    # A fresh process that imports only the notes (PIL.Image, no plugin yet).
    code = (
        "import logging\n"
        "from packer.image.notes import capture_notes, notes_of\n"
        "with capture_notes(), notes_of('x') as notes:\n"
        "    logging.getLogger('PIL.TiffImagePlugin').error('boom')\n"
        "print([(n.kind, n.detail) for n in notes])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('decoder_message', 'boom')]"
    assert done.stderr == ""
