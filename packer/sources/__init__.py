"""Where image bytes come from: image folders, WebDataset tar shards, Parquet files.

Every source, local or remote (s3://, gs://, file://, anything pyarrow.fs opens), lists
its images as `Record`s: an id, the file that holds the bytes and where in it. The index
stores those locations (one line per kind in packer.sources.record), and a worker's
`ByteReader` reads any of them back.

Modules: `location` (URIs, filesystems, listings, fingerprints), `record`, `source` (the
common base), one module per kind (`image_folder`, `webdataset`, `parquet`), `detect`
(`open_source`), `errors` (`DatasetError`, the one error for a wrong dataset path) and
`reader` (`ByteReader`).
"""

from packer.sources.detect import open_source, source_of
from packer.sources.errors import DatasetError
from packer.sources.location import normalize_uri
from packer.sources.parquet import image_column
from packer.sources.reader import ByteReader
from packer.sources.record import Record
from packer.sources.source import FileGroup, Source

__all__ = [
    "ByteReader",
    "DatasetError",
    "FileGroup",
    "Record",
    "Source",
    "image_column",
    "normalize_uri",
    "open_source",
    "source_of",
]
