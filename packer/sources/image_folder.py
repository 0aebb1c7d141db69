"""Image folders: root/<class>/**/<image>, labelled as torchvision's ImageFolder."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow.fs as pafs

from packer.sources.record import Record
from packer.sources.source import Source

# Image files an image folder holds (torchvision's IMG_EXTENSIONS plus GIF and AVIF).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".avif",
)


@dataclass(frozen=True)
class ImageFolderSource(Source):
    """root/<class>/**/<image>: labels are sorted class folder indices, as torchvision's
    ImageFolder; images directly in the root get label -1."""

    kind: ClassVar[str] = "image_folder"

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
        for entry in self.files(IMAGE_EXTENSIONS):
            relative = self.location.relative(entry.path)
            top, sep, _ = relative.partition("/")
            records.append(
                Record(
                    image_id=relative,
                    uri=self.location.uri_of(entry.path),
                    offset=-1,
                    length=-1,
                    row=-1,
                    label=labels[top] if sep else -1,
                    nbytes=entry.size if entry.size is not None else -1,
                )
            )
        return records
