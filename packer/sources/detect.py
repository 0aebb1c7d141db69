"""Which kind of source a URI holds: `open_source` looks at its listing and decides."""

from __future__ import annotations

import pyarrow.fs as pafs

from packer.sources.image_folder import IMAGE_EXTENSIONS, ImageFolderSource
from packer.sources.location import Location, extension
from packer.sources.parquet import ParquetSource
from packer.sources.source import Source
from packer.sources.webdataset import WebDatasetSource

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
    location = Location.open(uri)
    entries = location.listing()
    files = [entry for entry in entries if entry.type == pafs.FileType.File]
    counts = {
        "parquet": sum(extension(entry.path) == ".parquet" for entry in files),
        "webdataset": sum(extension(entry.path) == ".tar" for entry in files),
        "image_folder": sum(extension(entry.path) in IMAGE_EXTENSIONS for entry in files),
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
    source.__dict__["entries"] = entries  # reuse the listing (cached_property storage)
    return source
