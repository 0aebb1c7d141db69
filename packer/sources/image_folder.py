"""Image folders: root/<class>/**/<image>, labelled as torchvision's ImageFolder."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow.fs as pafs

from packer.image.formats import FORMAT_OF_EXTENSION
from packer.sources.record import Record
from packer.sources.source import Source

# Every extension the installed Pillow registers for a format it decodes (.jpg, .png,
# .webp, .tif, .tga, .pcx, .sgi/.rgb, .xpm, .cur, .fits, .fli, ...): each file is decoded
# as the format its extension names (packer.image.formats). Anything else in a folder
# (text, archives, .pdf, .eps without Ghostscript) is skipped and counted by extension.
IMAGE_EXTENSIONS = tuple(sorted(FORMAT_OF_EXTENSION))


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

    def records(self) -> list[Record]:
        labels = {name: i for i, name in enumerate(self.class_names)}
        records = []
        for entry in self.files(self.member_extensions):
            relative = self.location.relative(entry.path)
            top, sep, _ = relative.partition("/")
            records.append(
                Record(
                    image_id=relative,
                    uri=self.location.uri_of(entry.path),
                    offset=-1,
                    length=-1,
                    source_row=-1,
                    label=labels[top] if sep else -1,
                    nbytes=entry.size if entry.size is not None else -1,
                )
            )
        return records
