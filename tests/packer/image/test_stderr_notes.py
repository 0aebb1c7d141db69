"""What C code prints to fd 2 while an image is read becomes that image's notes; what is
not the decoder's still reaches stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from packer.image.imageio import decode_resized, read_header
from packer.image.notes import capture_notes, notes_of
from packer.image.reject import RejectedImage
from packer.image.stderr_notes import MAX_LINES, stderr_as_notes
from tests.packer.format_cases import jpeg_tiff_with_a_stray_marker, tiff_with_too_many_samples

REPO = Path(__file__).resolve().parents[3]


def test_what_is_written_to_fd_2_during_a_read_becomes_the_images_notes(capfd):
    with notes_of("scans/1.tif") as notes, stderr_as_notes():
        os.write(2, b"libfoo: first warning\nlibfoo: second warning\n")
    assert [(n.image_id, n.kind, n.detail) for n in notes] == [
        ("scans/1.tif", "decoder_message", "libfoo: first warning"),
        ("scans/1.tif", "decoder_message", "libfoo: second warning"),
    ]
    assert capfd.readouterr().err == ""


def test_on_a_thread_reading_no_image_the_output_goes_back_to_stderr(capfd):
    with stderr_as_notes():
        os.write(2, b"libfoo: nobody's image\n")
    assert capfd.readouterr().err == "libfoo: nobody's image\n"


def test_a_read_that_raises_still_keeps_its_lines_and_gives_fd_2_back(capfd):
    with notes_of("a.tif") as notes, pytest.raises(RuntimeError), stderr_as_notes():
        os.write(2, b"libfoo: about to fail\n")
        raise RuntimeError("decoder error -2")
    assert [n.detail for n in notes] == ["libfoo: about to fail"]
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_a_flood_of_lines_keeps_the_first_ones_and_counts_the_rest():
    with notes_of("a.tif") as notes, stderr_as_notes():
        os.write(2, b"".join(b"line %d\n" % i for i in range(MAX_LINES + 5)))
    assert len(notes) == MAX_LINES + 1
    assert notes[-1].detail == "(5 more lines printed by the decoder, not kept)"


def test_each_thread_gets_only_the_lines_written_during_its_own_read(capfd):
    barrier = threading.Barrier(4)

    def read(i: int) -> list[str]:
        barrier.wait()
        with notes_of(f"img-{i}") as notes:
            for _ in range(5):
                with stderr_as_notes():
                    os.write(2, f"image {i}\n".encode())
        return sorted({n.detail for n in notes})

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, range(4)))
    assert results == [[f"image {i}"] for i in range(4)]
    assert capfd.readouterr().err == ""


def test_python_writes_to_sys_stderr_pass_through_while_fd_2_is_captured():
    # In a child process, where sys.stderr is the interpreter's own fd-2 stream (under
    # pytest it is a capture object that never touches fd 2).
    code = (
        "import json, os, sys\n"
        "from packer.image.notes import notes_of\n"
        "from packer.image.stderr_notes import stderr_as_notes\n"
        "with notes_of('x') as notes, stderr_as_notes():\n"
        "    print('from python', file=sys.stderr)\n"
        "    os.write(2, b'from C\\n')\n"
        "print('after', file=sys.stderr)\n"
        "print(json.dumps([n.detail for n in notes]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["from C"]
    assert done.stderr == "from python\nafter\n"


def test_libtiffs_message_during_a_decode_is_a_note_and_the_image_still_decodes(capfd):
    data = jpeg_tiff_with_a_stray_marker()
    with notes_of("stray.tif") as notes:
        width, height = read_header(data)
        assert decode_resized(data, width, height).shape == (height, width, 3)
    assert [n.kind for n in notes] == ["decoder_message"]
    assert "marker" in notes[0].detail
    assert capfd.readouterr().err == ""


def test_a_message_pillow_logs_at_the_header_is_a_note_of_the_rejected_image(capfd):
    with capture_notes(), notes_of("many.tif") as notes, pytest.raises(RejectedImage):
        read_header(tiff_with_too_many_samples())
    assert [(n.kind, n.detail) for n in notes] == [
        ("decoder_message", "More samples per pixel than can be decoded: 9")
    ]
    assert capfd.readouterr().err == ""
