"""Which kind of source a URI holds: `open_source` looks at its listing and decides.

The kind is the one most of the dataset files are: image files (by the extensions the
installed Pillow decodes), WebDataset *.tar shards, or *.parquet files. Every other file
(a README, a stray archive in an image folder, a preview .jpg beside tar shards) is
skipped and counted by extension (`Source.skipped_by_extension`), never fatal. Paths
that cannot be a dataset raise `DatasetError` with one line naming the problem and the
fix.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from packer.sources.errors import DatasetError
from packer.sources.image_folder import ImageFolderSource
from packer.sources.location import Location, extension
from packer.sources.parquet import ParquetSource
from packer.sources.source import FileGroup, Source, skipped_by_extension
from packer.sources.webdataset import WebDatasetSource

_SOURCE_TYPES: tuple[type[Source], ...] = (ImageFolderSource, WebDatasetSource, ParquetSource)

_WHAT_A_DATASET_IS = (
    "give a folder of class subfolders of image files (.jpg, .png, .webp, ...), "
    "WebDataset *.tar shards, or *.parquet files"
)


def source_of(group: FileGroup) -> Source:
    """The source a file group belongs to, without listing it again (on a worker)."""
    kind = next(t for t in _SOURCE_TYPES if t.kind == group.kind)
    return kind(Location.open(group.root))


def open_source(uri: str) -> Source:
    """Detect what `uri` holds and return the matching Source.

    A .parquet file or a folder mostly of them -> parquet; a .tar file or a folder mostly
    of them -> webdataset; a folder mostly of image files (in class subfolders or not) ->
    image_folder. Raises DatasetError for a path that does not exist, a single image
    file, a folder holding no dataset file, or a tie between two kinds.
    """
    location = Location.open(uri)
    entries = location.listing()
    files = [entry for entry in entries if entry.type == pafs.FileType.File]
    counts = {
        kind: sum(extension(entry.path) in kind.member_extensions for entry in files)
        for kind in _SOURCE_TYPES
    }
    single_file = len(entries) == 1 and entries[0].path == location.path and files
    if single_file and counts[ImageFolderSource]:
        raise DatasetError(
            f"dataset {location.uri!r} is a single image file, not a dataset: give the "
            "folder that holds it (images in class subfolders get those classes as labels)"
        )
    most = max(counts.values())
    if most == 0:
        raise DatasetError(
            f"dataset {location.uri!r} holds no images{_found(entries)}: {_WHAT_A_DATASET_IS}"
        )
    leaders = [kind for kind, count in counts.items() if count == most]
    if len(leaders) > 1:
        detail = ", ".join(f"{counts[kind]} {kind.kind}" for kind in leaders)
        raise DatasetError(
            f"dataset {location.uri!r} mixes kinds in equal numbers ({detail}): point at "
            "a folder of one kind"
        )
    source = leaders[0](location)
    source.__dict__["entries"] = entries  # reuse the listing (cached_property storage)
    return source


def _found(entries: list[pafs.FileInfo]) -> str:
    """ " (found 3 files: .txt 2, (none) 1)", or " (it is empty)"."""
    skipped = skipped_by_extension(entries, ())
    if not skipped:
        return " (it is empty)"
    total = sum(skipped.values())
    shown = ", ".join(f"{ext} {count}" for ext, count in list(skipped.items())[:6])
    more = ", ..." if len(skipped) > 6 else ""
    return f" (found {total} file{'s' * (total != 1)}: {shown}{more})"
