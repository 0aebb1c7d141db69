"""Helpers for the sources tests: read a source's images back, write a tar shard."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from packer.sources import ByteReader, Source


def bytes_by_id(source: Source) -> dict[str, bytes]:
    """Every record of `source` read back with a fresh ByteReader, by image id."""
    reader = ByteReader()
    return {
        r.image_id: reader.read(r.uri, r.offset, r.length, r.source_row) for r in source.records()
    }


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    """A tar file holding `members` (name -> bytes) in the given order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
