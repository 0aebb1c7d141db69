"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], durable: bool = True
) -> None:
    """Call `write(handle)` on a temporary file beside `path`, sync it, then rename it over.

    For example `write_atomically(p, lambda f: torch.save(state, f))` or
    `write_atomically(p, lambda f: pq.write_table(table, f))`. On any failure the
    temporary file is removed and `path` is left as it was. `durable=False` skips the
    fsync: readers still never see half a file, but a power cut may lose the new one
    (right for outputs that are cheap to regenerate, such as packed batch files).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_affixes(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def leftover_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files that writes of `path` left when their process was killed
    (kill -9 skips the cleanup): .checkpoint.pt.k3j9x2.tmp beside checkpoint.pt."""
    target = Path(path)
    prefix, suffix = _temporary_affixes(target)
    return sorted(target.parent.glob(f"{prefix}*{suffix}"))


def _temporary_affixes(target: Path) -> tuple[str, str]:
    # Hidden, and named after the target, so a leftover is found and never read as data.
    return f".{target.name}.", ".tmp"


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """`write_atomically` for bytes already in memory (JSON, small state files)."""
    write_atomically(path, lambda out: out.write(data))
