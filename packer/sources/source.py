"""A dataset of images at one location: what every kind of source has in common.

A source lists its images file group by file group (`FileGroup`: one WebDataset shard,
one Parquet file, or a run of an image folder's files), so the index scans groups as
independent tasks (on Ray: packer.pipeline) and keeps each group's part apart, and a
source that gains shards has only the new groups scanned (packer.index.cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow.fs as pafs

from packer.sources.location import Location, extension
from packer.sources.record import Record


@dataclass(frozen=True)
class FileGroup:
    """Files of a source listed and scanned together; all a worker needs, so it pickles
    small. `digest` changes when a file's path, size or mtime, or the class names an
    image folder's labels come from, change."""

    kind: str
    root: str  # the source's URI
    paths: tuple[str, ...]  # on the source's filesystem
    sizes: tuple[int, ...]
    mtimes: tuple[int, ...]
    class_names: tuple[str, ...] = ()  # an image folder's, which its labels index

    @property
    def name(self) -> str:
        return self.paths[0] if self.paths else ""

    @property
    def digest(self) -> str:
        digest = hashlib.sha256(f"{self.kind}\n{self.root}\n".encode())
        for path, size, mtime in zip(self.paths, self.sizes, self.mtimes, strict=True):
            digest.update(f"{path}\t{size}\t{mtime}\n".encode())
        digest.update("\n".join(self.class_names).encode())
        return digest.hexdigest()[:32]


# Parquet columns holding each image's size by default (the LAION/DataComp convention).
SIZE_COLUMNS = ("width", "height")


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
        """Every image of the source, group by group (labels given as text numbered)."""
        records = [r for group in self.file_groups() for r in self.group_records(group)]
        numbers = {name: n for n, name in enumerate(self.label_texts(records))}
        if not numbers:
            return records
        return [
            r if r.label_name is None else dataclasses.replace(r, label=numbers[r.label_name])
            for r in records
        ]

    def label_texts(self, records: Iterable[Record]) -> list[str]:
        """The sorted labels given as text: they number 0, 1, ... in this order."""
        return sorted({r.label_name for r in records if r.label_name is not None})

    def file_groups(self) -> list[FileGroup]:
        """The source's files in groups, in listing order (one group a file by default)."""
        return [self.group_of([entry]) for entry in self.files(self.member_extensions)]

    def group_of(self, entries: list[pafs.FileInfo]) -> FileGroup:
        return FileGroup(
            kind=self.kind,
            root=self.uri,
            paths=tuple(e.path for e in entries),
            sizes=tuple(e.size if e.size is not None else -1 for e in entries),
            mtimes=tuple(e.mtime_ns if e.mtime_ns is not None else -1 for e in entries),
        )

    def label_names_of(self, group: FileGroup) -> list[str] | None:
        """Class names a group's files declare (Parquet's ClassLabel), if any."""
        return None

    def group_records(
        self, group: FileGroup, size_columns: tuple[str, str] | None = SIZE_COLUMNS
    ) -> list[Record]:
        """The images of one file group; sizes from the metadata where it states them
        (`size_columns` of a Parquet file; None: never, every header is read)."""
        raise NotImplementedError

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
