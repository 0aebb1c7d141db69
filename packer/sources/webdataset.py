"""WebDataset tar shards: members grouped by key, each image read as a byte range of its
shard (never untarred)."""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow as pa
import pyarrow.fs as pafs

from packer.sources.record import Record
from packer.sources.source import Source, numbered_classes

# WebDataset image members, in order of preference when a sample has several.
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_WDS_LABEL_EXTENSIONS = ("cls", "cls2", "label")


@dataclass(frozen=True)
class WebDatasetSource(Source):
    """*.tar shards; members share a key up to the first dot of their basename.

    "shard-0.tar" holding 00042.jpg and 00042.cls ("3") gives image "shard-0.tar/00042"
    with label 3, read as the byte range of 00042.jpg inside the shard.
    """

    kind: ClassVar[str] = "webdataset"
    member_extensions: ClassVar[tuple[str, ...]] = (".tar",)

    @cached_property
    def _records(self) -> list[Record]:
        records = []
        for entry in self.files(self.member_extensions):
            records.extend(self._shard_records(entry))
        return records

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return numbered_classes(record.label for record in self._records)

    def records(self) -> list[Record]:
        return list(self._records)

    def _shard_records(self, entry: pafs.FileInfo) -> list[Record]:
        shard_uri = self.location.uri_of(entry.path)
        shard_name = self.location.relative(entry.path)
        images: dict[str, tuple[str, tarfile.TarInfo]] = {}
        labels: dict[str, int] = {}
        broken = False
        try:
            with (
                self.location.fs.open_input_file(entry.path) as handle,
                tarfile.open(fileobj=handle, mode="r:") as tar,
            ):
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _split_member_name(member.name)
                    if ext in WDS_IMAGE_EXTENSIONS:
                        best = images.get(key)
                        rank = WDS_IMAGE_EXTENSIONS.index(ext)
                        if best is None or rank < WDS_IMAGE_EXTENSIONS.index(best[0]):
                            images[key] = (ext, member)
                    elif ext in _WDS_LABEL_EXTENSIONS and key not in labels:
                        labels[key] = _parse_label(tar, member)
        except (OSError, EOFError, tarfile.TarError, pa.ArrowException):
            # Keep the members listed before the damage; a cut-off last member fails
            # later as truncated. The stand-in record counts the shard's loss.
            broken = True
        records = [
            Record(
                image_id=f"{shard_name}/{key}",
                uri=shard_uri,
                offset=member.offset_data,
                length=member.size,
                source_row=-1,
                label=labels.get(key, -1),
                nbytes=member.size,
            )
            for key, (_, member) in sorted(images.items())
        ]
        if broken:
            records.append(Record.unreadable(shard_name, shard_uri))
        return records


def _split_member_name(name: str) -> tuple[str, str]:
    """(key, extension), split at the basename's first dot.

    "./a/00042.seg.png" -> ("a/00042", "seg.png").
    """
    name = name.removeprefix("./")
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def _parse_label(tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
    if member.size > 64:
        return -1
    handle = tar.extractfile(member)
    text = handle.read().decode("utf-8", "replace").strip() if handle else ""
    try:
        return int(text)
    except ValueError:
        return -1
