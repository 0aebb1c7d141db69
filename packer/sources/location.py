"""Where a source lives: its URI, the pyarrow filesystem that opens it, and its listing.

Local paths (and file://) are spelled absolute; anything else is a URI that
`pyarrow.fs.FileSystem.from_uri` opens (s3://, gs://, ...). A listing is every entry
under the root, sorted by path, and its fingerprint is the hash the index cache checks.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from packer.sources.errors import DatasetError


def normalize_uri(uri: str) -> str:
    """A canonical spelling of a source: local paths (and file://) absolute, URIs as given.

    "./data/", "data" and "file:///work/data" all become "/work/data" (cwd /work), so
    the index cache finds one entry for them.
    """
    if not uri:
        raise DatasetError("empty dataset path: give a folder, a *.tar shard or a *.parquet file")
    if uri.startswith("file://"):
        uri = urlsplit(uri).path
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/") if not uri.endswith("://") else uri


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def extension(path: str) -> str:
    """The lower-cased extension with its dot: "a/B.JPG" -> ".jpg"."""
    return posixpath.splitext(path)[1].lower()


@dataclass(frozen=True)
class Location:
    """A source root: its filesystem, its path there, and how to spell a child as a URI."""

    uri: str  # normalised
    fs: pafs.FileSystem = field(compare=False, repr=False)
    path: str

    @classmethod
    def open(cls, uri: str) -> Location:
        uri = normalize_uri(uri)
        try:
            fs, path = resolve(uri)
        except (OSError, ValueError, pa.ArrowException) as error:
            raise DatasetError(f"cannot open dataset {uri!r}: {error}") from error
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

    def listing(self) -> list[pafs.FileInfo]:
        """Every entry under the root (or the root file itself), sorted by path."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            raise DatasetError(
                f"dataset {self.uri!r} does not exist: check the path (or the URI's bucket)"
            )
        if info.type == pafs.FileType.File:
            return [info]
        selector = pafs.FileSelector(self.path, recursive=True)
        return sorted(self.fs.get_file_info(selector), key=lambda entry: entry.path)

    def fingerprint(self, kind: str, entries: list[pafs.FileInfo]) -> str:
        """A hash of a listing: every path with its size and mtime (directories by path).

        Directories count because an empty class folder still shifts ImageFolder labels.
        """
        digest = hashlib.sha256(f"{kind}\n{self.uri}\n".encode())
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                line = f"d\t{self.relative(entry.path)}\n"
            else:
                mtime = entry.mtime_ns if entry.mtime_ns is not None else -1
                line = f"f\t{self.relative(entry.path)}\t{entry.size}\t{mtime}\n"
            digest.update(line.encode())
        return digest.hexdigest()
