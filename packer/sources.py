"""Where image bytes come from: image folders, WebDataset tar shards, Parquet files.

Every source, local or remote (s3://, gs://, file://, anything pyarrow.fs opens), lists
its images as `Record`s: an id, the file that holds the bytes and where in it. The index
stores those locations, and a worker's `ByteReader` reads any of them back:

    image_folder  /data/imgs/cat/001.jpg           offset=-1  length=-1   row=-1
    webdataset    /data/shards/shard-000.tar       offset=1536 length=4821 row=-1
    parquet       /data/train-0.parquet            offset=-1  length=-1   row=17

A tar member is read as a byte range of its shard (never untarred), a Parquet image by
its row in the file (the reader keeps the row group that holds it, since the fill step
reads many rows of one file in order).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import posixpath
import tarfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from packer.imageio import REJECT_REASONS, RejectedImage

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
# WebDataset image members, in order of preference when a sample has several.
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_WDS_LABEL_EXTENSIONS = ("cls", "cls2", "label")
# Parquet columns that may hold a string id for each row, in order of preference.
_PARQUET_ID_COLUMNS = ("image_id", "key", "path")

SOURCE_KINDS = ("image_folder", "webdataset", "parquet")


# The id suffix of the stand-in record for a shard or Parquet file that cannot be listed.
UNREADABLE = "#unreadable"


@dataclass(frozen=True)
class Record:
    """One image's location. `nbytes` is its encoded size when a listing gives it, else -1.

    `error` is set (to "read_error") only on the stand-in record of a container that could
    not be listed: "shard-7.tar/#unreadable" keeps a broken shard counted as rejected
    instead of silently missing, or failing the whole scan.
    """

    image_id: str
    uri: str
    offset: int
    length: int
    row: int
    label: int
    nbytes: int = -1
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.image_id:
            raise ValueError("a record needs a non-empty image_id")
        if self.row < -1 or self.offset < -1 or self.length < -1:
            raise ValueError(f"bad location for {self.image_id}: {self}")
        if self.error is not None and self.error not in REJECT_REASONS:
            raise ValueError(f"unknown error reason {self.error!r} for {self.image_id}")


def _unreadable(name: str, uri: str) -> Record:
    return Record(f"{name}/{UNREADABLE}", uri, -1, -1, -1, -1, error="read_error")


# --------------------------------------------------------------------------- locations


def normalize_uri(uri: str) -> str:
    """A canonical spelling of a source: local paths (and file://) absolute, URIs as given.

    "./data/", "data" and "file:///work/data" all become "/work/data" (cwd /work), so
    the index cache finds one entry for them.
    """
    if not uri:
        raise ValueError("empty source uri")
    if uri.startswith("file://"):
        uri = urlsplit(uri).path
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/") if not uri.endswith("://") else uri


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


@dataclass(frozen=True)
class _Location:
    """A source root: its filesystem, its path there, and how to spell a child as a URI."""

    uri: str  # normalised
    fs: pafs.FileSystem = field(compare=False, repr=False)
    path: str

    @classmethod
    def open(cls, uri: str) -> _Location:
        uri = normalize_uri(uri)
        try:
            fs, path = _resolve(uri)
        except (OSError, ValueError, pa.ArrowException) as error:
            raise ValueError(f"cannot open source {uri!r}: {error}") from error
        return cls(uri=uri, fs=fs, path=path.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def uri_of(self, path: str) -> str:
        """The URI of a path listed on this filesystem (an absolute path when local)."""
        if self.is_local:
            return path
        parts = urlsplit(self.uri)
        spelled = (
            f"{parts.scheme}://{parts.netloc}{path}"
            if path.startswith("/")
            else f"{parts.scheme}://{path}"
        )
        return f"{spelled}?{parts.query}" if parts.query else spelled

    def relative(self, path: str) -> str:
        """A listed path relative to the root: "/data/imgs/cat/001.jpg" -> "cat/001.jpg"."""
        if path == self.path:
            return posixpath.basename(path)
        return posixpath.relpath(path, self.path)


def _listing(location: _Location) -> list[pafs.FileInfo]:
    """Every entry under the root (or the root file itself), sorted by path."""
    info = location.fs.get_file_info(location.path)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"source {location.uri!r} does not exist")
    if info.type == pafs.FileType.File:
        return [info]
    selector = pafs.FileSelector(location.path, recursive=True)
    return sorted(location.fs.get_file_info(selector), key=lambda entry: entry.path)


def _fingerprint(kind: str, location: _Location, entries: list[pafs.FileInfo]) -> str:
    """A hash of the listing: every path with its size and mtime (directories by path).

    Directories count because an empty class folder still shifts ImageFolder labels.
    """
    digest = hashlib.sha256(f"{kind}\n{location.uri}\n".encode())
    for entry in entries:
        if entry.type == pafs.FileType.Directory:
            line = f"d\t{location.relative(entry.path)}\n"
        else:
            mtime = entry.mtime_ns if entry.mtime_ns is not None else -1
            line = f"f\t{location.relative(entry.path)}\t{entry.size}\t{mtime}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A dataset of images: `records()` lists them, `scan()` builds their index."""

    kind: ClassVar[str] = ""
    location: _Location

    @property
    def uri(self) -> str:
        return self.location.uri

    @cached_property
    def _entries(self) -> list[pafs.FileInfo]:
        return _listing(self.location)

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
        return _fingerprint(self.kind, self.location, self._entries)

    def scan(self, num_threads: int = 8) -> pa.Table:
        """The index of this source (see packer.index), built from image headers."""
        from packer.index import build_index  # index imports this module

        return build_index(self, num_threads=num_threads)

    def _files(self, extensions: tuple[str, ...]) -> list[pafs.FileInfo]:
        return [
            entry
            for entry in self._entries
            if entry.type == pafs.FileType.File and _extension(entry.path) in extensions
        ]


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
            for entry in self._entries
            if entry.type == pafs.FileType.Directory and posixpath.dirname(entry.path) == root
        )

    def records(self) -> list[Record]:
        labels = {name: i for i, name in enumerate(self.class_names)}
        records = []
        for entry in self._files(IMAGE_EXTENSIONS):
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


@dataclass(frozen=True)
class WebDatasetSource(Source):
    """*.tar shards; members share a key up to the first dot of their basename.

    "shard-0.tar" holding 00042.jpg and 00042.cls ("3") gives image "shard-0.tar/00042"
    with label 3, read as the byte range of 00042.jpg inside the shard.
    """

    kind: ClassVar[str] = "webdataset"

    @cached_property
    def _records(self) -> list[Record]:
        records = []
        for entry in self._files((".tar",)):
            records.extend(self._shard_records(entry))
        return records

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return _numbered_classes(record.label for record in self._records)

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
                row=-1,
                label=labels.get(key, -1),
                nbytes=member.size,
            )
            for key, (_, member) in sorted(images.items())
        ]
        if broken:
            records.append(_unreadable(shard_name, shard_uri))
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


def _numbered_classes(labels: Iterable[int]) -> list[str]:
    """Class names "0".."max label" for sources that store only numbers."""
    top = max(labels, default=-1)
    return [str(i) for i in range(top + 1)]


@dataclass(frozen=True)
class ParquetSource(Source):
    """*.parquet: image bytes in `image` (binary, or a struct with `bytes` as HF datasets
    write), else the first binary column; label from `label` if present, else -1."""

    kind: ClassVar[str] = "parquet"

    @property
    def _files_meta(self) -> list[_ParquetFileMeta]:
        return self._scanned[0]

    @cached_property
    def _scanned(self) -> tuple[list[_ParquetFileMeta], list[Record]]:
        """Ids, labels and row groups of every readable file, and a stand-in record for
        each unreadable one. A schema without an image column is a ValueError instead:
        the dataset is misdescribed, not damaged."""
        metas: list[_ParquetFileMeta] = []
        unreadable: list[Record] = []
        for entry in self._files((".parquet",)):
            uri = self.location.uri_of(entry.path)
            try:
                with self.location.fs.open_input_file(entry.path) as handle:
                    parquet = pq.ParquetFile(handle)
                    schema = parquet.schema_arrow
                    id_name = _id_column(schema)
                    columns = [name for name in (id_name, "label") if name in schema.names]
                    table = parquet.read(columns=columns)
                    starts = _row_group_starts(parquet.metadata)
            except (OSError, pa.ArrowException):
                unreadable.append(_unreadable(self.location.relative(entry.path), uri))
                continue
            try:
                image_column(schema)
            except ValueError as error:
                raise ValueError(f"parquet file {uri!r}: {error}") from error
            metas.append(
                _ParquetFileMeta(
                    uri=uri,
                    name=self.location.relative(entry.path),
                    num_rows=table.num_rows,
                    ids=table.column(id_name).to_pylist() if id_name else None,
                    labels=table.column("label").to_pylist() if "label" in columns else None,
                    row_group_starts=starts,
                    label_names=_hf_label_names(schema),
                )
            )
        return metas, unreadable

    @cached_property
    def _label_names(self) -> list[str] | None:
        """Class names: HF ClassLabel names, or the sorted values of a string label."""
        strings = {
            label
            for meta in self._files_meta
            for label in meta.labels or ()
            if isinstance(label, str)
        }
        if strings:
            return sorted(strings)
        return next((m.label_names for m in self._files_meta if m.label_names), None)

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if self._label_names is not None:
            return list(self._label_names)
        return _numbered_classes(record.label for record in self.records())

    def records(self) -> list[Record]:
        lookup = {name: i for i, name in enumerate(self._label_names or ())}
        records = []
        for meta in self._files_meta:
            for row in range(meta.num_rows):
                label = meta.labels[row] if meta.labels is not None else None
                if isinstance(label, str):
                    label = lookup[label]
                image_id = meta.ids[row] if meta.ids is not None else None
                records.append(
                    Record(
                        image_id=image_id or f"{meta.name}/{row}",
                        uri=meta.uri,
                        offset=-1,
                        length=-1,
                        row=row,
                        label=-1 if label is None else int(label),
                    )
                )
        return records + self._scanned[1]

    def header_chunks(self, chunk_size: int = 256) -> list[list[Record]]:
        # One chunk per row group, so each thread decodes a row group once.
        by_file = {meta.uri: meta.row_group_starts for meta in self._files_meta}
        chunks: list[list[Record]] = []
        current: list[Record] = []
        current_group: tuple[str, int] | None = None
        for record in self.records():
            starts = by_file.get(record.uri)  # None for an unreadable file's stand-in
            group = (record.uri, bisect.bisect_right(starts, record.row) - 1 if starts else -1)
            if group != current_group and current:
                chunks.append(current)
                current = []
            current_group = group
            current.append(record)
        if current:
            chunks.append(current)
        return chunks


@dataclass(frozen=True)
class _ParquetFileMeta:
    """What a Parquet source keeps of one file: ids, labels, row group bounds."""

    uri: str
    name: str  # relative to the source root
    num_rows: int
    ids: list[str | None] | None
    labels: list[Any] | None  # ints, strings or None
    row_group_starts: list[int]
    label_names: list[str] | None


def image_column(schema: pa.Schema) -> tuple[str, bool]:
    """(name, is_struct) of the column holding encoded image bytes.

    `image` if present; else the first binary column or struct column with a `bytes`
    field (Hugging Face `datasets` stores images as struct<bytes: binary, path: string>).
    """
    candidates = [schema.field("image")] if "image" in schema.names else list(schema)
    for candidate in candidates:
        kind = _bytes_kind(candidate.type)
        if kind is not None:
            return candidate.name, kind
    raise ValueError(
        "no image column: expected `image`, a binary column, or a struct with a `bytes` "
        f"field; schema is {schema}"
    )


def _bytes_kind(data_type: pa.DataType) -> bool | None:
    """False for a binary type, True for a struct with a binary `bytes` field, else None."""
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return False
    if pa.types.is_struct(data_type):
        index = data_type.get_field_index("bytes")
        if index >= 0 and _bytes_kind(data_type.field(index).type) is False:
            return True
    return None


def _id_column(schema: pa.Schema) -> str | None:
    for name in _PARQUET_ID_COLUMNS:
        if name in schema.names and pa.types.is_string(schema.field(name).type):
            return name
    return None


def _hf_label_names(schema: pa.Schema) -> list[str] | None:
    """ClassLabel names from the `huggingface` schema metadata `datasets` writes."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        label = features["label"]
        if label.get("_type") == "ClassLabel" and label.get("names"):
            return [str(name) for name in label["names"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def _row_group_starts(metadata: pq.FileMetaData) -> list[int]:
    """First row of every row group: row groups of 100, 100, 50 rows -> [0, 100, 200]."""
    starts, total = [], 0
    for i in range(metadata.num_row_groups):
        starts.append(total)
        total += metadata.row_group(i).num_rows
    return starts


_SOURCE_TYPES: dict[str, type[Source]] = {
    "image_folder": ImageFolderSource,
    "webdataset": WebDatasetSource,
    "parquet": ParquetSource,
}


def open_source(uri: str) -> Source:
    """Detect what `uri` holds and return the matching Source.

    A .parquet file or a folder of them -> parquet; a .tar file or a folder of them ->
    webdataset; a folder of image files (in class subfolders or not) -> image_folder.
    A folder mixing these kinds, or holding none, is a ValueError that says so.
    """
    location = _Location.open(uri)
    entries = _listing(location)
    files = [entry for entry in entries if entry.type == pafs.FileType.File]
    counts = {
        "parquet": sum(_extension(entry.path) == ".parquet" for entry in files),
        "webdataset": sum(_extension(entry.path) == ".tar" for entry in files),
        "image_folder": sum(_extension(entry.path) in IMAGE_EXTENSIONS for entry in files),
    }
    found = [kind for kind, count in counts.items() if count]
    if not found:
        raise ValueError(
            f"source {location.uri!r} holds no images, *.tar shards or *.parquet files "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    if len(found) > 1:
        detail = ", ".join(f"{counts[kind]} {kind}" for kind in found)
        raise ValueError(f"source {location.uri!r} mixes kinds ({detail}); point at one kind")
    if entries[0].path == location.path and found == ["image_folder"]:
        raise ValueError(f"source {location.uri!r} is a single image, not a dataset")
    source = _SOURCE_TYPES[found[0]](location)
    source.__dict__["_entries"] = entries  # reuse the listing (cached_property storage)
    return source


# --------------------------------------------------------------------------- reading

# Filesystems whose paths are "bucket/key", so a cached one serves every URI of a bucket.
_BUCKET_FILESYSTEMS = tuple(
    getattr(pafs, name) for name in ("S3FileSystem", "GcsFileSystem") if hasattr(pafs, name)
)


class ByteReader:
    """Reads image bytes back from index locations. One per worker; not thread-safe.

    Caches filesystems, open files (tar shards, Parquet files) and the image column of
    the Parquet row groups read last (a shuffled batch hops between row groups, so one
    per file would thrash). Pickles to an empty reader, so it can ship with a Ray task.
    """

    def __init__(self, max_open_files: int = 16, max_row_groups: int = 8) -> None:
        if max_open_files < 1 or max_row_groups < 1:
            raise ValueError("ByteReader caches need room for at least one entry")
        self._max_open_files = max_open_files
        self._max_row_groups = max_row_groups
        self._local = pafs.LocalFileSystem()
        self._filesystems: dict[str, pafs.FileSystem] = {}
        self._files: OrderedDict[str, pa.NativeFile] = OrderedDict()
        self._parquet: OrderedDict[str, _ParquetImages] = OrderedDict()
        self._row_groups: OrderedDict[tuple[str, int], pa.Array] = OrderedDict()

    def __getstate__(self) -> dict[str, int]:
        return {"max_open_files": self._max_open_files, "max_row_groups": self._max_row_groups}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(**state)

    def read(self, uri: str, offset: int, length: int, row: int) -> bytes:
        """The bytes at a location: a whole file, a byte range, or a Parquet row's image."""
        try:
            if row >= 0:
                return self._read_row(uri, row)
            if offset >= 0 and length >= 0:
                return self._read_range(uri, offset, length)
            fs, path = self._resolve(uri)
            with fs.open_input_stream(path) as stream:
                return stream.readall()
        except RejectedImage:
            raise
        except (OSError, ValueError, IndexError, pa.ArrowException) as error:
            raise RejectedImage("read_error", f"{uri}: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._parquet.clear()
        self._row_groups.clear()

    def _resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if "://" not in uri:
            return self._local, uri
        parts = urlsplit(uri)
        # One filesystem per scheme, bucket and options (from_uri may cost a request).
        scope = f"{parts.scheme}://{parts.netloc}?{parts.query}"
        fs = self._filesystems.get(scope)
        if fs is not None and isinstance(fs, _BUCKET_FILESYSTEMS):
            return fs, f"{parts.netloc}{parts.path}"  # s3://bucket/key -> "bucket/key"
        fs, path = _resolve(uri)
        self._filesystems[scope] = fs
        return fs, path

    def _read_range(self, uri: str, offset: int, length: int) -> bytes:
        handle = self._files.get(uri)
        if handle is None:
            fs, path = self._resolve(uri)
            handle = fs.open_input_file(path)
            self._files[uri] = handle
            if len(self._files) > self._max_open_files:
                _, oldest = self._files.popitem(last=False)
                oldest.close()
        else:
            self._files.move_to_end(uri)
        return handle.read_at(length, offset) if length else b""

    def _read_row(self, uri: str, row: int) -> bytes:
        images = _lru_get(self._parquet, uri)
        if images is None:
            fs, path = self._resolve(uri)
            images = _ParquetImages(fs, path)
            _lru_put(self._parquet, uri, images, self._max_open_files)
        group, position = images.locate(row)
        values = _lru_get(self._row_groups, (uri, group))
        if values is None:
            values = images.read_group(group)
            _lru_put(self._row_groups, (uri, group), values, self._max_row_groups)
        value = values[position].as_py()
        return value if value is not None else b""


def _lru_get(cache: OrderedDict, key: Any) -> Any:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict, key: Any, value: Any, capacity: int) -> None:
    cache[key] = value
    while len(cache) > capacity:
        cache.popitem(last=False)


class _ParquetImages:
    """The image column of one Parquet file, read a row group at a time."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self._file = pq.ParquetFile(fs.open_input_file(path))
        self._column, self._is_struct = image_column(self._file.schema_arrow)
        self._starts = _row_group_starts(self._file.metadata)
        self._num_rows = self._file.metadata.num_rows

    def locate(self, row: int) -> tuple[int, int]:
        """(row group, position in it): row 130 with groups of 100 -> (1, 30)."""
        if not 0 <= row < self._num_rows:
            raise IndexError(f"row {row} out of range for {self._num_rows} rows")
        group = bisect.bisect_right(self._starts, row) - 1
        return group, row - self._starts[group]

    def read_group(self, group: int) -> pa.Array:
        values = self._file.read_row_group(group, columns=[self._column]).column(0)
        values = values.combine_chunks()
        return values.field("bytes") if self._is_struct else values
