"""The index table: one row per image, what its columns mean, its key and metadata.

One row per image with its location, label and EXIF-oriented size (packer.index.build
scans the headers, packer.index.cache keeps the result). An image whose header is
unreadable stays in the index with width = height = 0, its reason in `error` (e.g.
"not_an_image") and the reader's message in `detail`, so it is counted as rejected, never
lost. Pillow's warnings while reading a header become the image's `notes` (JSON, see
packer.image.notes). Files of the source's folder that are not dataset files are counted
by extension in the `navit.skipped` metadata (`index_skipped`). What the packer keeps
resident of it, and the views of it (rejects, notes, stats): packer.index.image_index.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("length", pa.int64()),
        pa.field("source_row", pa.int64()),
        pa.field("label", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("key", pa.uint64()),
        pa.field("error", pa.string()),
        pa.field("detail", pa.string()),  # the reject's message, when `error` is set
        pa.field("notes", pa.string()),  # JSON [{"kind", "detail"}] of header warnings
    ]
)
# Bump when the index's meaning changes (columns, header rules): old caches then rebuild.
# 4: the index is built per file group (packer.index.build); 5: a folder's .tga, .pcx,
# .sgi... are read as their name says (packer.image.formats).
INDEX_VERSION = 5
FINGERPRINT_KEY = b"navit.fingerprint"
SKIPPED_KEY = b"navit.skipped"
CACHE_PATH_KEY = b"navit.cache"
META_KEYS = (
    b"navit.source",
    b"navit.kind",
    b"navit.class_names",
    SKIPPED_KEY,
    FINGERPRINT_KEY,
)


def image_key(image_id: str) -> int:
    """A stable 64-bit key for an image id (blake2b), the same on every machine."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little")


def image_keys(image_ids: list[str]) -> np.ndarray:
    return np.fromiter((image_key(i) for i in image_ids), dtype=np.uint64, count=len(image_ids))


class _WithSchema(Protocol):
    """An index table, or an ImageIndex (packer.index.image_index): its schema's
    metadata says where the index came from."""

    @property
    def schema(self) -> pa.Schema: ...


def index_cache_path(index: _WithSchema) -> Path | None:
    """Where load_index cached this index; None for one built otherwise."""
    raw = (index.schema.metadata or {}).get(CACHE_PATH_KEY)
    return Path(raw.decode()) if raw else None


def index_class_names(index: _WithSchema) -> list[str]:
    """The class names stored in an index's metadata ([] when absent, e.g. synthetic)."""
    raw = (index.schema.metadata or {}).get(b"navit.class_names")
    return json.loads(raw) if raw else []


def index_skipped(index: _WithSchema) -> dict[str, int]:
    """Files of the source not read as dataset files, by extension: {".txt": 3, ".tar": 1}."""
    raw = (index.schema.metadata or {}).get(SKIPPED_KEY)
    return json.loads(raw) if raw else {}
