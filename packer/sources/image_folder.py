"""Image folders: root/<class>/**/<image>, labelled as torchvision's ImageFolder."""

from __future__ import annotations

import dataclasses
import posixpath
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow.fs as pafs

from packer.image.formats import FORMAT_OF_EXTENSION
from packer.sources.record import Record
from packer.sources.source import FileGroup, Source

# Every extension the installed Pillow registers for a format it decodes (.jpg, .png,
# .webp, .tif, .tga, .pcx, .sgi/.rgb, .xpm, .cur, .fits, .fli, ...): each file is decoded
# as the format its extension names (packer.image.formats). Anything else in a folder
# (text, archives, .pdf, .eps without Ghostscript) is skipped and counted by extension.
IMAGE_EXTENSIONS = tuple(sorted(FORMAT_OF_EXTENSION))
GROUP_FILES = 1024  # files per group on average (packer.sources.source.FileGroup)


@dataclass(frozen=True)
class ImageFolderSource(Source):
    """root/<class>/**/<image>: labels are sorted class folder indices, as torchvision's
    ImageFolder; images directly in the root get label -1."""

    kind: ClassVar[str] = "image_folder"
    member_extensions: ClassVar[tuple[str, ...]] = IMAGE_EXTENSIONS

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        root = self.location.path
        return sorted(
            posixpath.basename(entry.path)
            for entry in self.entries
            if entry.type == pafs.FileType.Directory and posixpath.dirname(entry.path) == root
        )

    def file_groups(self) -> list[FileGroup]:
        """Runs of files in listing order, cut after a file whose path hashes to 0 mod
        GROUP_FILES (and at 4 * GROUP_FILES files): a file added or removed changes only
        the run it falls in, so only that run is scanned again."""
        groups: list[FileGroup] = []
        run: list[pafs.FileInfo] = []
        for entry in self.files(self.member_extensions):
            run.append(entry)
            cut = zlib.crc32(entry.path.encode()) % GROUP_FILES == 0
            if cut or len(run) >= 4 * GROUP_FILES:
                groups.append(self.group_of(run))
                run = []
        if run:
            groups.append(self.group_of(run))
        return [dataclasses.replace(g, class_names=tuple(self.class_names)) for g in groups]

    def group_records(
        self, group: FileGroup, size_columns: tuple[str, str] | None = None
    ) -> list[Record]:
        labels = {name: i for i, name in enumerate(group.class_names)}
        records = []
        for path, size in zip(group.paths, group.sizes, strict=True):
            relative = self.location.relative(path)
            top, sep, _ = relative.partition("/")
            records.append(
                Record(
                    image_id=relative,
                    uri=self.location.uri_of(path),
                    offset=-1,
                    length=-1,
                    source_row=-1,
                    label=labels[top] if sep else -1,
                    nbytes=size,
                )
            )
        return records
