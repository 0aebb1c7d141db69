"""The header scan: every image's size and header errors, read without decoding pixels.

Only the first 64 KiB of each file is read (more only if Pillow needs it), on threads
that overlap the I/O. The result is the index table (packer.index.table); the planner
needs nothing else to lay out an epoch.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from packer.image.formats import format_named_by
from packer.image.imageio import read_header
from packer.image.notes import capture_notes, notes_of
from packer.image.reject import RejectedImage
from packer.index.table import INDEX_SCHEMA, SKIPPED_KEY, image_keys
from packer.sources import ByteReader, Record, Source

# A JPEG's or PNG's header nearly always lies in its first few KiB; EXIF blocks are at
# most 64 KiB. A header not found in this prefix is retried on the whole image.
HEADER_BYTES = 64 * 1024


def build_index(source: Source, num_threads: int = 8) -> pa.Table:
    """Scan every image header of `source` (threads overlap the I/O); sorted by image_id.

    Schema metadata carries the source URI, kind, class names and the files skipped
    by extension (JSON). Pillow's warnings become notes, on every thread (packer.image.notes).
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
        SKIPPED_KEY: json.dumps(source.skipped_by_extension()).encode(),
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
    # A folder's file is read as the format its name says; a shard member or a Parquet
    # row (uri: the .tar or .parquet) by signature alone.
    hint = format_named_by(record.uri)
    try:
        if record.source_row >= 0:  # Parquet: the row's bytes are in memory already
            width, height = read_header(reader.read(record.uri, -1, -1, record.source_row))
            return width, height, None, None
        start = max(record.offset, 0)
        total = record.length if record.length >= 0 else record.nbytes
        want = HEADER_BYTES if total < 0 else min(HEADER_BYTES, total)
        prefix = reader.read(record.uri, start, want, -1)
        try:
            width, height = read_header(prefix, hint)
        except RejectedImage:
            could_be_more = len(prefix) == want and (total < 0 or want < total)
            if not could_be_more:
                raise
            whole = reader.read(record.uri, record.offset, record.length, -1)
            width, height = read_header(whole, hint)
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
        "source_row": pa.array([record.source_row for record in records], pa.int64()),
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
    order = [(name, "ascending") for name in ("image_id", "uri", "source_row", "offset")]
    return table.sort_by(order)
