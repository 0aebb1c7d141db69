"""Image notes: Pillow's warnings about one image, kept as data instead of printed.

Pillow warns about images it can still use ("Palette images with Transparency expressed
in bytes should be converted to RGBA images", "Possibly corrupt EXIF data", a
DecompressionBombWarning under our own limit, "Truncated File Read"). Printed, one odd
folder fills a terminal; dropped, nobody learns that 3% of a dataset has broken EXIF.
So every warning raised while an image is read becomes a note on that image: a short
`kind` to count (`note_kind`) and Pillow's message as `detail`.

Python's warning machinery is process-global, so one `capture_notes()` (entered once,
around all the work, on the thread that starts it) routes the warnings of every thread,
and `notes_of(image_id)` on a worker thread collects those its image raises:

    with capture_notes():                      # index build / fill step
        ...                                    # on each worker thread:
        with notes_of("cat/001.jpg") as notes:
            read_header(data)                  # warnings land in `notes`, not stderr

Warnings raised outside `notes_of` (not about an image) still go where they went before.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

# (substring of Pillow's message, kind), first match wins; anything else is "warning".
_KINDS = (
    ("decompression bomb", "decompression_bomb_warning"),
    ("palette images with transparency", "palette_transparency"),
    ("exif", "corrupt_metadata"),
    ("tag data larger than file", "corrupt_metadata"),
    ("tag offset too large", "corrupt_metadata"),
    ("metadata warning", "corrupt_metadata"),
    ("truncated file read", "truncated_read"),
    ("malformed mpo", "malformed_mpo"),
    ("invalid apng", "invalid_apng"),
    ("allocate palette entry", "palette_transparency"),
)


@dataclass(frozen=True)
class ImageNote:
    """One warning about one image: {"image_id": "a/1.png", "kind": "corrupt_metadata",
    "detail": "Tag data larger than file. Skipping tag 270"}."""

    image_id: str
    kind: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"image_id": self.image_id, "kind": self.kind, "detail": self.detail}


def note_kind(message: str, category: type[Warning] = UserWarning) -> str:
    """The short kind of a Pillow warning: "Possibly corrupt EXIF data..." ->
    "corrupt_metadata"; an unknown message -> "warning"."""
    if issubclass(category, Image.DecompressionBombWarning):
        return "decompression_bomb_warning"
    lowered = message.lower()
    return next((kind for needle, kind in _KINDS if needle in lowered), "warning")


_current = threading.local()  # .notes: the list of the image being read on this thread
_lock = threading.Lock()
_depth = 0  # nested capture_notes() on the capturing thread


@contextmanager
def capture_notes() -> Iterator[None]:
    """Route every warning raised inside `notes_of` (on any thread) to its image's notes.

    Enter it on one thread around all the work; the worker threads it starts may enter
    `notes_of`. Nested use on the same thread is fine (the outer one keeps routing).
    """
    global _depth
    with _lock:
        _depth += 1
        outer = _depth > 1
    if outer:
        try:
            yield
        finally:
            with _lock:
                _depth -= 1
        return
    try:
        with warnings.catch_warnings():
            previous = warnings.showwarning
            # "always": every image gets its own note, not just the first one per location.
            warnings.simplefilter("always")

            def route(message, category, filename, lineno, file=None, line=None) -> None:
                notes = getattr(_current, "notes", None)
                if notes is None:
                    previous(message, category, filename, lineno, file, line)
                else:
                    notes.append((category, str(message)))

            warnings.showwarning = route
            yield
    finally:
        with _lock:
            _depth -= 1


@contextmanager
def notes_of(image_id: str) -> Iterator[list[ImageNote]]:
    """Collect the warnings this thread raises while reading `image_id` (inside
    `capture_notes`), as ImageNotes, one per distinct (kind, detail)."""
    raw: list[tuple[type[Warning], str]] = []
    notes: list[ImageNote] = []
    _current.notes = raw
    try:
        yield notes
    finally:
        _current.notes = None
        seen = set()
        for category, message in raw:
            note = ImageNote(image_id, note_kind(message, category), message)
            if (note.kind, note.detail) not in seen:
                seen.add((note.kind, note.detail))
                notes.append(note)
