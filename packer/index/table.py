"""The index table: one row per image, what its columns mean, and the views of it.

One row per image with its location, label and EXIF-oriented size (packer.index.build
scans the headers, packer.index.cache keeps the result). An image whose header is
unreadable stays in the index with width = height = 0, its reason in `error` (e.g.
"not_an_image") and the reader's message in `detail`, so it is counted as rejected, never
lost. Pillow's warnings while reading a header become the image's `notes` (JSON, see
packer.image.notes). Files of the source's folder that are not dataset files are counted
by extension in the `navit.skipped` metadata (`index_skipped`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from packer.image.notes import ImageNote
from packer.image.reject import Reject

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
INDEX_VERSION = 4  # 4: a folder's .tga, .pcx, .sgi... are read as their name says
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


def index_cache_path(table: pa.Table) -> Path | None:
    """Where load_index cached this index; None for one built otherwise."""
    raw = (table.schema.metadata or {}).get(CACHE_PATH_KEY)
    return Path(raw.decode()) if raw else None


def index_class_names(table: pa.Table) -> list[str]:
    """The class names stored in an index's metadata ([] when absent, e.g. synthetic)."""
    raw = (table.schema.metadata or {}).get(b"navit.class_names")
    return json.loads(raw) if raw else []


def header_rejects(table: pa.Table) -> list[Reject]:
    """Every image rejected before planning: its header could not be read, or the reject
    ledger marked it (packer.index.reject_ledger)."""
    failed = table.filter(table.column("error").is_valid())
    return [
        Reject(image_id, reason, detail or "")
        for image_id, reason, detail in zip(
            failed.column("image_id").to_pylist(),
            failed.column("error").to_pylist(),
            failed.column("detail").to_pylist(),
            strict=True,
        )
    ]


def header_notes(table: pa.Table) -> list[ImageNote]:
    """The notes (Pillow warnings) of the header scan, image by image."""
    if "notes" not in table.column_names:
        return []
    noted = table.filter(table.column("notes").is_valid())
    return [
        ImageNote(image_id, note["kind"], note["detail"])
        for image_id, raw in zip(
            noted.column("image_id").to_pylist(), noted.column("notes").to_pylist(), strict=True
        )
        for note in json.loads(raw)
    ]


def index_skipped(table: pa.Table) -> dict[str, int]:
    """Files of the source not read as dataset files, by extension: {".txt": 3, ".tar": 1}."""
    raw = (table.schema.metadata or {}).get(SKIPPED_KEY)
    return json.loads(raw) if raw else {}


def index_stats(table: pa.Table) -> dict[str, Any]:
    """{"images": n, "valid": k, "rejected": {reason: count}, "labelled": l, "notes":
    {kind: count}, "skipped": {extension: files}} for an index table."""
    errors = table.column("error").to_pylist()
    rejected = Counter(error for error in errors if error is not None)
    labels = table.column("label").to_numpy()
    notes = Counter(note.kind for note in header_notes(table))
    return {
        "images": table.num_rows,
        "valid": table.num_rows - sum(rejected.values()),
        "rejected": dict(sorted(rejected.items())),
        "labelled": int(np.count_nonzero(labels >= 0)),
        "notes": dict(sorted(notes.items())),
        "skipped": index_skipped(table),
    }
