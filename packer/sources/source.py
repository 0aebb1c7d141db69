"""A dataset of images at one location: what every kind of source has in common."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow.fs as pafs

from packer.sources.location import Location, extension
from packer.sources.record import Record


@dataclass(frozen=True)
class Source:
    """A dataset of images: `records()` lists them, `class_names` names their labels."""

    kind: ClassVar[str] = ""
    # Extensions of the files this kind reads (".jpg", ".tar", ...); the rest are skipped.
    member_extensions: ClassVar[tuple[str, ...]] = ()
    location: Location

    @property
    def uri(self) -> str:
        return self.location.uri

    @cached_property
    def entries(self) -> list[pafs.FileInfo]:
        """The location's listing, taken once (open_source hands over the one it took)."""
        return self.location.listing()

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    def records(self) -> list[Record]:
        raise NotImplementedError

    def header_chunks(self, chunk_size: int = 256) -> list[list[Record]]:
        """Records in groups a worker thread reads together (one Parquet row group each)."""
        records = self.records()
        return [records[i : i + chunk_size] for i in range(0, len(records), chunk_size)]

    def fingerprint(self) -> str:
        """Changes when any file's path, size or mtime changes; costs one listing."""
        return self.location.fingerprint(self.kind, self.entries)

    def skipped_by_extension(self) -> dict[str, int]:
        """Files under the root this source does not read, counted by extension."""
        return skipped_by_extension(self.entries, self.member_extensions)

    def files(self, extensions: tuple[str, ...]) -> list[pafs.FileInfo]:
        """The listed files whose extension (".jpg", lower case) is one of `extensions`."""
        return [
            entry
            for entry in self.entries
            if entry.type == pafs.FileType.File and extension(entry.path) in extensions
        ]


def skipped_by_extension(entries: Iterable[pafs.FileInfo], kept: tuple[str, ...]) -> dict[str, int]:
    """How many listed files of each extension are not one of `kept`, sorted by extension.

    A README, two .txt files and a stray .tar in an image folder: {".md": 1, ".tar": 1,
    ".txt": 2}. A file without an extension counts as "(none)".
    """
    counts = Counter(
        extension(entry.path) or "(none)"
        for entry in entries
        if entry.type == pafs.FileType.File and extension(entry.path) not in kept
    )
    return dict(sorted(counts.items()))


def numbered_classes(labels: Iterable[int]) -> list[str]:
    """Class names "0".."max label" for sources that store only numbers."""
    top = max(labels, default=-1)
    return [str(i) for i in range(top + 1)]
