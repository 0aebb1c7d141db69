"""WebDataset tar shards: members grouped by key, each image read as a byte range of its
shard (never untarred)."""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow as pa

from packer.sources.record import Record
from packer.sources.source import SIZE_COLUMNS, FileGroup, Source, numbered_classes

# WebDataset image members, in order of preference when a sample has several.
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_WDS_LABEL_EXTENSIONS = ("cls", "cls2", "label")
_MAX_JSON_BYTES = 1 << 16  # a sample's metadata; anything larger is not read


@dataclass(frozen=True)
class WebDatasetSource(Source):
    """*.tar shards; members share a key up to the first dot of their basename.

    "shard-0.tar" holding 00042.jpg and 00042.cls ("3") gives image "shard-0.tar/00042"
    with label 3, read as the byte range of 00042.jpg inside the shard. A 00042.json with
    integer "width" and "height" (img2dataset writes them) gives its size, so the index
    reads no byte of the image.
    """

    kind: ClassVar[str] = "webdataset"
    member_extensions: ClassVar[tuple[str, ...]] = (".tar",)

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return numbered_classes(record.label for record in self.records())

    def group_records(
        self, group: FileGroup, size_columns: tuple[str, str] | None = SIZE_COLUMNS
    ) -> list[Record]:
        return [r for path in group.paths for r in self._shard_records(path, size_columns)]

    def _shard_records(self, path: str, size_columns: tuple[str, str] | None) -> list[Record]:
        shard_uri = self.location.uri_of(path)
        shard_name = self.location.relative(path)
        images: dict[str, tuple[str, tarfile.TarInfo]] = {}
        labels: dict[str, int] = {}
        sizes: dict[str, tuple[int, int]] = {}
        broken = False
        try:
            with (
                self.location.fs.open_input_file(path) as handle,
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
                    elif ext == "json" and size_columns is not None and key not in sizes:
                        size = _json_size(tar, member)
                        if size is not None:
                            sizes[key] = size
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
                width=sizes.get(key, (-1, -1))[0],
                height=sizes.get(key, (-1, -1))[1],
            )
            for key, (_, member) in sorted(images.items())
        ]
        if broken:
            records.append(Record.unreadable(shard_name, shard_uri))
        return records


def _json_size(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, int] | None:
    """(width, height) from a sample's .json when both are positive integers, else None.

    img2dataset writes {"width": 640, "height": 480, "original_width": ...}: the size of
    the image stored in the shard, which is what the index wants.
    """
    if member.size > _MAX_JSON_BYTES:
        return None
    handle = tar.extractfile(member)
    try:
        meta = json.loads(handle.read()) if handle else None
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    width, height = meta.get("width"), meta.get("height")
    if type(width) is int and type(height) is int and width > 0 and height > 0:
        return width, height
    return None


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
