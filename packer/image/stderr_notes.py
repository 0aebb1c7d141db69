"""What C libraries print to stderr while an image is read, as that image's notes.

Pillow's codecs call C libraries that report to file descriptor 2 themselves: libtiff
prints "tempfile.tif: Using code not yet in table." for a broken LZW strip and, through
its JPEG codec, "JPEGLib: Unsupported marker type 0x45." for a damaged JPEG-in-TIFF that
still decodes. Python cannot intercept those writes, so `stderr_as_notes()` points fd 2
at a spool file while the image is read and turns what landed there into notes
(packer.image.notes.note_message, kind "decoder_message"), one per line:

    with notes_of("scans/0001.tif") as notes, stderr_as_notes():
        decode(...)      # libtiff prints a warning: it is in `notes`, not on stderr

fd 2 belongs to the whole process, so:

- one read at a time holds the redirect (a lock; nested use on a thread is a no-op), so
  a line is never given to another thread's image;
- Python code writing to `sys.stderr` meanwhile (another thread's print, a traceback,
  logging's last-resort handler) is not caught: `sys.stderr` points at the real stderr
  for the duration, so what is not the decoder's passes through. Only output written to
  fd 2 by C code, or through a stream object kept from before, lands in the spool; on a
  thread reading no image it is written back to stderr afterwards, unchanged;
- the first `MAX_LINES` lines become notes, then one note counts the rest.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from packer.image.notes import note_message

MAX_LINES = 20  # lines of one read kept as notes; the rest are counted in one more
_MAX_BYTES = 64 * 1024  # of spooled output read back per image

_lock = threading.Lock()
_local = threading.local()  # .active: this thread holds the redirect


@dataclass(frozen=True)
class _Spool:
    """This process's spool file and its fd that follows the real stderr.

    Made once per process (a forked child makes its own: a spool shared with the parent
    would share its file offset).
    """

    pid: int
    spool_fd: int  # where fd 2 points during a read
    real_fd: int  # a copy of fd 2, refreshed before each read (fd 2 may be re-pointed
    # between reads, e.g. by Ray or pytest); never closed, so `passthrough` stays valid
    passthrough: TextIO  # sys.stderr during a read: writes to real_fd


_spool: _Spool | None = None


def _process_spool() -> _Spool | None:
    """The spool of this process (made on first use); None when fd 2 is not open."""
    global _spool
    if _spool is not None and _spool.pid == os.getpid():
        return _spool
    try:
        real_fd = os.dup(2)
    except OSError:
        return None
    spool_fd, path = tempfile.mkstemp(prefix="navit-stderr-")
    os.unlink(path)  # the open descriptor keeps it; nothing is left behind
    encoding = getattr(sys.__stderr__, "encoding", None) or "utf-8"
    passthrough = io.TextIOWrapper(
        io.FileIO(real_fd, "w", closefd=False),
        encoding=encoding,
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    _spool = _Spool(os.getpid(), spool_fd, real_fd, passthrough)
    return _spool


@contextmanager
def stderr_as_notes() -> Iterator[None]:
    """Capture what is written to fd 2 inside the block as notes of the image this
    thread reads (see the module docstring), also when the block raises."""
    if getattr(_local, "active", False):
        yield
        return
    captured = b""
    try:
        with _lock:
            _local.active = True
            try:
                spool = _redirect()
                try:
                    yield
                finally:
                    if spool is not None:
                        captured = _restore(spool)
            finally:
                _local.active = False
    finally:
        if captured:
            _deliver(captured)


def _redirect() -> _Spool | None:
    """Point fd 2 at the spool and sys.stderr at the real stderr; None if it cannot."""
    spool = _process_spool()
    if spool is None:
        return None
    _flush(sys.stderr)
    try:
        os.dup2(2, spool.real_fd)  # follow wherever fd 2 points now
        os.dup2(spool.spool_fd, 2)
    except OSError:
        return None
    if _writes_to_fd2(sys.stderr):
        _local.previous = sys.stderr
        sys.stderr = spool.passthrough
    return spool


def _restore(spool: _Spool) -> bytes:
    """Point fd 2 and sys.stderr back; the bytes written to the spool meanwhile."""
    os.dup2(spool.real_fd, 2)
    previous = getattr(_local, "previous", None)
    _local.previous = None
    if previous is not None and sys.stderr is spool.passthrough:
        sys.stderr = previous
    return _drain(spool.spool_fd)


def _drain(fd: int) -> bytes:
    """What the spool holds (at most _MAX_BYTES), leaving it empty at offset 0."""
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    data = os.pread(fd, min(size, _MAX_BYTES), 0)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # fd 2 shared this offset while it pointed here
    return data


def _deliver(captured: bytes) -> None:
    """Each line a note of this thread's image; all of it back to stderr if none."""
    text = captured.decode("utf-8", "backslashreplace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept, dropped = lines[:MAX_LINES], len(lines) - MAX_LINES
    if dropped > 0:
        kept.append(f"({dropped} more lines printed by the decoder, not kept)")
    if lines and not note_message(kept[0]):
        sys.stderr.write(text)
        _flush(sys.stderr)
        return
    for line in kept[1:]:
        note_message(line)


def _writes_to_fd2(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def _flush(stream: TextIO | None) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):
        pass
