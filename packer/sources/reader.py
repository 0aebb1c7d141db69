"""Reading image bytes back from the locations the index stores.

A whole file for an image folder, a byte range of its shard for a WebDataset member, a
row of the image column for Parquet (see packer.sources.record for the three shapes).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from packer.image.reject import RejectedImage
from packer.sources.location import resolve
from packer.sources.parquet import ParquetImages

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
        self._parquet: OrderedDict[str, ParquetImages] = OrderedDict()
        self._row_groups: OrderedDict[tuple[str, int], pa.Array] = OrderedDict()

    def __getstate__(self) -> dict[str, int]:
        return {"max_open_files": self._max_open_files, "max_row_groups": self._max_row_groups}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(**state)

    def read(self, uri: str, offset: int, length: int, source_row: int) -> bytes:
        """The bytes at a location: a whole file, a byte range, or a Parquet row's image."""
        try:
            if source_row >= 0:
                return self._read_row(uri, source_row)
            if offset >= 0 and length >= 0:
                return self._read_range(uri, offset, length)
            fs, path = self._resolve(uri)
            with fs.open_input_stream(path) as stream:
                return stream.readall()
        except RejectedImage:
            raise
        except (OSError, ValueError, IndexError, pa.ArrowException) as error:
            raise RejectedImage("read_error", f"{uri}: {type(error).__name__}: {error}") from error

    def _resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if "://" not in uri:
            return self._local, uri
        parts = urlsplit(uri)
        # One filesystem per scheme, bucket and options (from_uri may cost a request).
        scope = f"{parts.scheme}://{parts.netloc}?{parts.query}"
        fs = self._filesystems.get(scope)
        if fs is not None and isinstance(fs, _BUCKET_FILESYSTEMS):
            return fs, f"{parts.netloc}{parts.path}"  # s3://bucket/key -> "bucket/key"
        fs, path = resolve(uri)
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
            images = ParquetImages(fs, path)
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
