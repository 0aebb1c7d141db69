"""Image notes: what Pillow says about one image, kept as data instead of printed.

Pillow warns about images it can still use ("Palette images with Transparency expressed
in bytes should be converted to RGBA images", "Possibly corrupt EXIF data", a
DecompressionBombWarning under our own limit, "Truncated File Read"), logs some
("More samples per pixel than can be decoded: 9"), and its C libraries print to stderr
("JPEGLib: Unsupported marker type 0x45." from libtiff's JPEG codec). Printed, one odd
folder fills a terminal; dropped, nobody learns that 3% of a dataset has broken EXIF.
So each of them, raised while an image is read, becomes a note on that image: a short
`kind` to count (`note_kind`) and the message as `detail`.

Python's warning machinery and logging are process-global, so one `capture_notes()`
(entered once, around all the work, on the thread that starts it) routes the warnings
and Pillow's log records of every thread, and `notes_of(image_id)` on a worker thread
collects those its image raises:

    with capture_notes():                      # index build / fill step
        ...                                    # on each worker thread:
        with notes_of("cat/001.jpg") as notes:
            read_header(data)                  # warnings land in `notes`, not stderr

What the C libraries print is captured by packer.image.stderr_notes, which hands each
line to `note_message`. Warnings, log records and printed lines outside `notes_of` (not
about an image) still go where they went before.
"""

from __future__ import annotations

import logging
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
# The kind of a message Pillow logged or a C library printed that no needle above names.
DECODER_MESSAGE = "decoder_message"


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
    return _kind_of(message, "warning")


def _kind_of(message: str, default: str) -> str:
    lowered = message.lower()
    return next((kind for needle, kind in _KINDS if needle in lowered), default)


def note_message(message: str) -> bool:
    """Note `message`, logged by Pillow or printed by a C library, on the image this
    thread is reading (kind: a known one, else "decoder_message"); False, noting nothing,
    when this thread reads no image (the caller then lets the message through)."""
    notes = getattr(_current, "notes", None)
    if notes is None:
        return False
    notes.append((_kind_of(message, DECODER_MESSAGE), message))
    return True


class _PillowLogToNotes(logging.Filter):
    """On Pillow's loggers: a WARNING or worse logged while this thread reads an image
    becomes its note and reaches no handler (so no "lastResort" line on stderr); every
    other record passes as before (debug output someone asked for included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        return not note_message(record.getMessage())


_LOG_FILTER = _PillowLogToNotes()


_loggers_seen: tuple[int, list[logging.Logger]] = (-1, [])  # (loggers in all, Pillow's)


def _pillow_loggers() -> list[logging.Logger]:
    """Pillow's loggers ("PIL.TiffImagePlugin", ...): a filter acts only on records of
    the logger it is on, not on its children's, so each gets it. Every plugin is
    imported first (Image.init), so its logger exists; the list is looked up again
    only when the number of loggers changed (capture_notes is entered per batch and per
    index group, so this stays off the per-image path)."""
    global _loggers_seen
    Image.init()
    registry = logging.root.manager.loggerDict
    if _loggers_seen[0] != len(registry):
        names = sorted(name for name in list(registry) if name.split(".")[0] == "PIL")
        _loggers_seen = (len(registry), [logging.getLogger(name) for name in names])
    return _loggers_seen[1]


_current = threading.local()  # .notes: (kind, detail) of the image read on this thread
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
    loggers = _pillow_loggers()
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
                    notes.append((note_kind(str(message), category), str(message)))

            warnings.showwarning = route
            for logger in loggers:
                logger.addFilter(_LOG_FILTER)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(_LOG_FILTER)
        with _lock:
            _depth -= 1


@contextmanager
def notes_of(image_id: str) -> Iterator[list[ImageNote]]:
    """Collect the warnings, Pillow log records (inside `capture_notes`) and printed
    lines (packer.image.stderr_notes) this thread raises while reading `image_id`, as
    ImageNotes, one per distinct (kind, detail)."""
    raw: list[tuple[str, str]] = []
    notes: list[ImageNote] = []
    _current.notes = raw
    try:
        yield notes
    finally:
        _current.notes = None
        for kind, detail in dict.fromkeys(raw):
            notes.append(ImageNote(image_id, kind, detail))
