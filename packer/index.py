"""The index: one row per image with its location, label and EXIF-oriented size.

Built once by a header scan (only the first 64 KiB of each file is read, more only if
Pillow needs it) and cached as Parquet, keyed by the source URI and checked against the
source's listing fingerprint. The planner needs nothing else to lay out an epoch.

An image whose header is unreadable stays in the index with width = height = 0, its
reason in `error` (e.g. "not_an_image") and the reader's message in `detail`, so it is
counted as rejected, never lost. Pillow's warnings while reading a header become the
image's `notes` (JSON, see packer.notes), never stderr. Files of the source's folder that
are not dataset files are counted by extension in the `navit.skipped` metadata
(`index_skipped`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packer.contract.files import write_atomically
from packer.imageio import RejectedImage, read_header
from packer.notes import ImageNote, capture_notes, notes_of
from packer.sampling import image_keys
from packer.sources import ByteReader, Record, Source, normalize_uri, open_source

INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("length", pa.int64()),
        pa.field("row", pa.int64()),
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
INDEX_VERSION = 2
# A JPEG's or PNG's header nearly always lies in its first few KiB; EXIF blocks are at
# most 64 KiB. A header not found in this prefix is retried on the whole image.
HEADER_BYTES = 64 * 1024

_FINGERPRINT_KEY = b"navit.fingerprint"
_SKIPPED_KEY = b"navit.skipped"
CACHE_PATH_KEY = b"navit.cache"
_META_KEYS = (
    b"navit.source",
    b"navit.kind",
    b"navit.class_names",
    _SKIPPED_KEY,
    _FINGERPRINT_KEY,
)


def default_cache_dir() -> Path:
    """$NAVIT_CACHE_DIR, else ~/.cache/navit-pack/index."""
    configured = os.environ.get("NAVIT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "navit-pack" / "index"


def build_index(source: Source, num_threads: int = 8) -> pa.Table:
    """Scan every image header of `source` (threads overlap the I/O); sorted by image_id.

    Schema metadata carries the source URI, kind, class names and the files skipped
    by extension (JSON). Pillow's warnings become notes, on every thread (packer.notes).
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    chunks = source.header_chunks()
    local = threading.local()

    def scan_chunk(chunk: list[Record]) -> list[_Header]:
        reader = getattr(local, "reader", None)
        if reader is None:
            reader = local.reader = ByteReader()
        return [_noted_header(record, reader) for record in chunk]

    with capture_notes():
        if num_threads == 1 or len(chunks) <= 1:
            results = [scan_chunk(chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(num_threads, thread_name_prefix="navit-index") as pool:
                results = list(pool.map(scan_chunk, chunks))
    records = [record for chunk in chunks for record in chunk]
    sizes = [size for chunk_sizes in results for size in chunk_sizes]
    table = _to_table(records, sizes)
    metadata = {
        b"navit.source": source.uri.encode(),
        b"navit.kind": source.kind.encode(),
        b"navit.class_names": json.dumps(source.class_names).encode(),
        _SKIPPED_KEY: json.dumps(source.skipped_by_extension()).encode(),
    }
    return table.replace_schema_metadata(metadata)


# (width, height, reason or None, detail or None, notes as JSON or None) of one image
_Header = tuple[int, int, str | None, str | None, str | None]


def _noted_header(record: Record, reader: ByteReader) -> _Header:
    with notes_of(record.image_id) as notes:
        width, height, reason, detail = _header(record, reader)
    noted = json.dumps([{"kind": n.kind, "detail": n.detail} for n in notes]) if notes else None
    return width, height, reason, detail, noted


def _header(record: Record, reader: ByteReader) -> tuple[int, int, str | None, str | None]:
    """(width, height, None, None) or (0, 0, reason, detail) for one record, reading as
    little as it can."""
    if record.error is not None:  # a container that could not be listed
        return 0, 0, record.error, f"{record.uri}: cannot be listed"
    try:
        if record.row >= 0:  # Parquet: the row's bytes are in memory already
            width, height = read_header(reader.read(record.uri, -1, -1, record.row))
            return width, height, None, None
        start = max(record.offset, 0)
        total = record.length if record.length >= 0 else record.nbytes
        want = HEADER_BYTES if total < 0 else min(HEADER_BYTES, total)
        prefix = reader.read(record.uri, start, want, -1)
        try:
            width, height = read_header(prefix)
        except RejectedImage:
            could_be_more = len(prefix) == want and (total < 0 or want < total)
            if not could_be_more:
                raise
            whole = reader.read(record.uri, record.offset, record.length, -1)
            width, height = read_header(whole)
        return width, height, None, None
    except RejectedImage as error:
        return 0, 0, error.reason, error.detail


def _to_table(records: list[Record], sizes: list[_Header]) -> pa.Table:
    ids = [record.image_id for record in records]
    columns = {
        "image_id": pa.array(ids, pa.string()),
        "uri": pa.array([record.uri for record in records], pa.string()),
        "offset": pa.array([record.offset for record in records], pa.int64()),
        "length": pa.array([record.length for record in records], pa.int64()),
        "row": pa.array([record.row for record in records], pa.int64()),
        "label": pa.array([record.label for record in records], pa.int64()),
        "width": pa.array([size[0] for size in sizes], pa.int32()),
        "height": pa.array([size[1] for size in sizes], pa.int32()),
        "key": pa.array(image_keys(ids), pa.uint64()),
        "error": pa.array([size[2] for size in sizes], pa.string()),
        "detail": pa.array([size[3] for size in sizes], pa.string()),
        "notes": pa.array([size[4] for size in sizes], pa.string()),
    }
    table = pa.table(columns, schema=INDEX_SCHEMA)
    # image_id alone decides the order; the rest only breaks ties between duplicate ids.
    order = [(name, "ascending") for name in ("image_id", "uri", "row", "offset")]
    return table.sort_by(order)


def cache_path(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Where the index of `uri` is cached: <cache_dir>/<sha256 of the normalised uri>.parquet."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(normalize_uri(uri).encode()).hexdigest()[:32]
    return directory / f"{digest}.parquet"


def load_index(uri: str, cache_dir: str | Path | None = None, num_threads: int = 8) -> pa.Table:
    """The index of `uri`, from the cache when its fingerprint still matches the source.

    The fingerprint is the source listing's hash (paths, sizes, mtimes) and INDEX_VERSION,
    so adding, removing or rewriting a file rebuilds the index; nothing else does.
    """
    source = open_source(uri)
    fingerprint = f"v{INDEX_VERSION}:{source.fingerprint()}".encode()
    path = cache_path(source.uri, cache_dir)
    cached = _read_cached(path, fingerprint)
    if cached is not None:
        return _with_cache_path(cached, path)
    table = build_index(source, num_threads=num_threads)
    metadata = dict(table.schema.metadata or {})
    metadata[_FINGERPRINT_KEY] = fingerprint
    table = table.replace_schema_metadata(metadata)
    write_atomically(path, lambda out: pq.write_table(table, out))
    return _with_cache_path(table, path)


def _with_cache_path(table: pa.Table, path: Path) -> pa.Table:
    """Say where the index is cached (`navit.cache`, never stored in the file itself), so
    what lives beside it (packer.reject_ledger) is found from the table alone."""
    metadata = dict(table.schema.metadata or {})
    metadata[CACHE_PATH_KEY] = str(path).encode()
    return table.replace_schema_metadata(metadata)


def index_cache_path(table: pa.Table) -> Path | None:
    """Where load_index cached this index; None for one built otherwise."""
    raw = (table.schema.metadata or {}).get(CACHE_PATH_KEY)
    return Path(raw.decode()) if raw else None


def _read_cached(path: Path, fingerprint: bytes) -> pa.Table | None:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return None  # absent or unreadable: rebuild
    metadata = schema.metadata or {}
    if metadata.get(_FINGERPRINT_KEY) != fingerprint:
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    if table.schema.remove_metadata() != INDEX_SCHEMA:
        return None
    kept = {key: value for key, value in metadata.items() if key in _META_KEYS}
    return table.replace_schema_metadata(kept)


def index_class_names(table: pa.Table) -> list[str]:
    """The class names stored in an index's metadata ([] when absent, e.g. synthetic)."""
    raw = (table.schema.metadata or {}).get(b"navit.class_names")
    return json.loads(raw) if raw else []


def header_rejects(table: pa.Table) -> list[tuple[str, str]]:
    """(image_id, reason) of every image rejected before planning (see
    header_reject_details for the messages too)."""
    return [(image_id, reason) for image_id, reason, _ in header_reject_details(table)]


def header_reject_details(table: pa.Table) -> list[tuple[str, str, str]]:
    """(image_id, reason, detail) of every image rejected before planning: its header
    could not be read, or a RejectLedger marked it (packer.reject_ledger)."""
    failed = table.filter(table.column("error").is_valid())
    details = (
        failed.column("detail").to_pylist()
        if "detail" in failed.column_names
        else [None] * failed.num_rows
    )
    return [
        (image_id, reason, detail or "")
        for image_id, reason, detail in zip(
            failed.column("image_id").to_pylist(),
            failed.column("error").to_pylist(),
            details,
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
    raw = (table.schema.metadata or {}).get(_SKIPPED_KEY)
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
