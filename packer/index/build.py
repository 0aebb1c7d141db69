"""The header scan: every image's size and header errors, read without decoding pixels.

The unit of work is one file group of the source (packer.sources.FileGroup: a WebDataset
shard, a Parquet file, a run of an image folder's files): `scan_group` lists it and sizes
its images, a pure function of the group, so groups run as independent tasks (threads
here, Ray tasks in packer.pipeline) and the index cache keeps each group's part apart.

An image's size comes from the dataset's metadata when it states one (a sample's .json
with width and height, Parquet width/height columns; packer.sources), and then no byte
of the image is read; else from its header: only the first 64 KiB of the file (more only
if Pillow needs it). `IndexOptions.verify_sizes` checks a seeded sample of the metadata
sizes against the headers, and a mismatch refuses the index, naming the images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from packer.image.formats import format_named_by
from packer.image.imageio import read_header
from packer.image.notes import capture_notes, notes_of
from packer.image.reject import RejectedImage
from packer.index.table import INDEX_SCHEMA, SKIPPED_KEY, image_keys
from packer.sources import ByteReader, DatasetError, FileGroup, Record, Source, source_of
from packer.sources.source import SIZE_COLUMNS

# A JPEG's or PNG's header nearly always lies in its first few KiB; EXIF blocks are at
# most 64 KiB. A header not found in this prefix is retried on the whole image.
HEADER_BYTES = 64 * 1024
# A group's part of the index may carry labels given as text, numbered once all are known.
LABEL_NAME = "label_name"
_MISMATCHES_SHOWN = 10


class SizeMismatchError(DatasetError):
    """Metadata sizes that the images' headers contradict: the index is refused."""

    def __init__(self, mismatches: list[str], checked: int) -> None:
        shown = "; ".join(mismatches[:_MISMATCHES_SHOWN])
        more = len(mismatches) - _MISMATCHES_SHOWN
        super().__init__(
            f"{len(mismatches)} of {checked} images checked have a metadata size their "
            f"header contradicts: {shown}{f'; and {more} more' if more > 0 else ''}. "
            "Fix the metadata, or index without it (--verify-sizes does not help: the "
            "sizes decide the plan)"
        )
        self.mismatches = mismatches


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built: where sizes may come from, and how many to check.

    `metadata_sizes` False reads every header. `verify_sizes` (0..1) is the share of the
    metadata-sized images whose header is read too, a seeded sample (`verify_seed`):
    a larger share checks a superset of a smaller one's images.
    """

    metadata_sizes: bool = True
    size_columns: tuple[str, str] = SIZE_COLUMNS  # Parquet columns of width and height
    verify_sizes: float = 0.0
    verify_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.verify_sizes <= 1.0:
            raise ValueError(f"verify_sizes must lie in [0, 1], got {self.verify_sizes}")
        columns = tuple(self.size_columns)
        if len(columns) != 2 or not all(columns) or columns[0] == columns[1]:
            raise ValueError(f"size_columns must be two column names, got {self.size_columns}")
        object.__setattr__(self, "size_columns", columns)

    @property
    def sizes_from(self) -> str:
        """What a group's scan depends on besides its files, for the cache's key."""
        return f"{self.metadata_sizes}:{','.join(self.size_columns)}"


@dataclass(frozen=True)
class GroupScan:
    """One file group's part of the index (INDEX_SCHEMA, plus LABEL_NAME for labels
    given as text), and what scanning it read and found."""

    group: FileGroup
    table: pa.Table
    label_names: list[str] | None  # ClassLabel names a Parquet file declares
    image_bytes_read: int
    verified: float  # share of the metadata sizes checked against headers
    checked: int  # metadata sizes checked
    mismatches: list[str] = field(default_factory=list)


# scan_group over groups, in their order: threads here, Ray tasks in packer.pipeline.
GroupScanner = Callable[[list[FileGroup], IndexOptions], Iterator[GroupScan]]


def scan_groups_on_threads(
    groups: list[FileGroup], options: IndexOptions, num_threads: int = 8
) -> Iterator[GroupScan]:
    """scan_group over groups on a thread pool (the I/O overlaps), in order.

    One notes capture around the whole pool: entered per group inside scan_group, the
    first group to finish would end it while other threads still read headers, and
    their warnings would go to stderr instead of their images' notes.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if num_threads == 1 or len(groups) <= 1:
        yield from (scan_group(group, options) for group in groups)
        return
    with (
        capture_notes(),
        ThreadPoolExecutor(num_threads, thread_name_prefix="navit-index") as pool,
    ):
        yield from pool.map(lambda group: scan_group(group, options), groups)


def scan_group(group: FileGroup, options: IndexOptions) -> GroupScan:
    """List one file group and size its images: from the metadata where it states a
    size (a seeded `verify_sizes` share checked against the header), else the header.
    Pillow's warnings become the images' notes (packer.image.notes)."""
    source = source_of(group)
    records = source.group_records(group, options.size_columns if options.metadata_sizes else None)
    reader = _CountingReader()
    keys = image_keys([r.image_id for r in records])
    from_metadata = np.array([r.width > 0 for r in records], bool)
    checked = from_metadata & _sampled(keys, options.verify_sizes, options.verify_seed)
    headers: list[_Header] = []
    mismatches: list[str] = []
    with capture_notes():
        for record, known, check in zip(
            records, from_metadata.tolist(), checked.tolist(), strict=True
        ):
            if known and not check:
                headers.append((record.width, record.height, None, None, None))
                continue
            header = _noted_header(record, reader)
            if known:
                if header[:2] != (record.width, record.height):
                    found = f"{header[0]}x{header[1]}" if header[2] is None else header[2]
                    mismatches.append(
                        f"{record.image_id} ({record.uri}): metadata "
                        f"{record.width}x{record.height}, header {found}"
                    )
                header = (record.width, record.height, None, None, header[4])
            headers.append(header)
    return GroupScan(
        group=group,
        table=_to_table(records, headers, keys),
        label_names=source.label_names_of(group),
        image_bytes_read=reader.bytes_read,
        verified=options.verify_sizes if from_metadata.any() else 1.0,
        checked=int(checked.sum()),
        mismatches=mismatches,
    )


def build_index(
    source: Source, num_threads: int = 8, options: IndexOptions | None = None
) -> pa.Table:
    """The index table of `source`, every group scanned (threads overlap the I/O).

    Rows: group by group in listing order, by image_id within a group. Schema metadata
    carries the source URI, kind, class names and the files skipped by extension (JSON).
    Raises SizeMismatchError when a checked metadata size is contradicted.
    """
    options = options or IndexOptions()
    scans = list(scan_groups_on_threads(source.file_groups(), options, num_threads))
    refuse_mismatches(scans)
    names = class_names(source, [group_summary(scan) for scan in scans])
    parts = [numbered(scan.table, names) for scan in scans]
    table = pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table()
    return table.replace_schema_metadata(index_metadata(source, names))


def refuse_mismatches(scans: Iterable[GroupScan]) -> None:
    mismatches: list[str] = []
    checked = 0
    for scan in scans:
        mismatches += scan.mismatches
        checked += scan.checked
    if mismatches:
        raise SizeMismatchError(mismatches, checked)


def group_summary(scan: GroupScan) -> dict:
    """What the index needs of a group's part besides its rows: its labels (for the
    class names), how much of it was checked, and what its scan read."""
    table = scan.table
    texts: set[str] = set()
    if LABEL_NAME in table.column_names:
        texts = {t for t in table.column(LABEL_NAME).to_pylist() if t is not None}
    labels = table.column("label").to_numpy()
    return {
        "max_label": int(labels.max()) if len(labels) else -1,
        "label_texts": sorted(texts),
        "label_names": scan.label_names,
        "verified": scan.verified,
        "image_bytes_read": scan.image_bytes_read,
    }


def class_names(source: Source, summaries: Iterable[dict]) -> list[str]:
    """The source's class names from its groups' summaries: an image folder's class
    folders; else the sorted labels given as text, declared ClassLabel names, or
    "0".."max label"."""
    if source.kind == "image_folder":
        return list(source.class_names)
    texts: set[str] = set()
    declared = None
    top = -1
    for summary in summaries:
        texts.update(summary["label_texts"])
        declared = declared or summary["label_names"]
        top = max(top, summary["max_label"])
    if texts:
        return sorted(texts)
    return declared or [str(i) for i in range(top + 1)]


def numbered(part: pa.Table, names: list[str]) -> pa.Table:
    """A group's part with labels given as text numbered by `names`, in INDEX_SCHEMA."""
    if LABEL_NAME in part.column_names:
        number = {name: n for n, name in enumerate(names)}
        texts = part.column(LABEL_NAME).to_pylist()
        labels = part.column("label").to_pylist()
        relabelled = [
            label if t is None else number[t] for label, t in zip(labels, texts, strict=True)
        ]
        at = part.schema.get_field_index("label")
        part = part.set_column(at, "label", pa.array(relabelled, pa.int64()))
        part = part.drop_columns([LABEL_NAME])
    return part.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def index_metadata(source: Source, names: list[str]) -> dict[bytes, bytes]:
    return {
        b"navit.source": source.uri.encode(),
        b"navit.kind": source.kind.encode(),
        b"navit.class_names": json.dumps(names).encode(),
        SKIPPED_KEY: json.dumps(source.skipped_by_extension()).encode(),
    }


def _sampled(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded share of the images, by key: a larger fraction keeps a superset."""
    if fraction <= 0.0:
        return np.zeros(len(keys), bool)
    with np.errstate(over="ignore"):
        mixed = (keys ^ np.uint64(seed * 0x9E3779B97F4A7C15 % (1 << 64))) * np.uint64(
            0xBF58476D1CE4E5B9
        )
        mixed ^= mixed >> np.uint64(31)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


class _CountingReader(ByteReader):
    """A ByteReader that counts the image bytes it returns (what the scan read)."""

    bytes_read = 0

    def read(self, uri: str, offset: int, length: int, source_row: int) -> bytes:
        data = super().read(uri, offset, length, source_row)
        self.bytes_read += len(data)
        return data


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
        if record.source_row >= 0:  # Parquet: the reader reads the row's group once
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


def _to_table(records: list[Record], sizes: list[_Header], keys: np.ndarray) -> pa.Table:
    columns = {
        "image_id": pa.array([record.image_id for record in records], pa.string()),
        "uri": pa.array([record.uri for record in records], pa.string()),
        "offset": pa.array([record.offset for record in records], pa.int64()),
        "length": pa.array([record.length for record in records], pa.int64()),
        "source_row": pa.array([record.source_row for record in records], pa.int64()),
        "label": pa.array([record.label for record in records], pa.int64()),
        "width": pa.array([size[0] for size in sizes], pa.int32()),
        "height": pa.array([size[1] for size in sizes], pa.int32()),
        "key": pa.array(keys, pa.uint64()),
        "error": pa.array([size[2] for size in sizes], pa.string()),
        "detail": pa.array([size[3] for size in sizes], pa.string()),
        "notes": pa.array([size[4] for size in sizes], pa.string()),
    }
    table = pa.table(columns, schema=INDEX_SCHEMA)
    names = [record.label_name for record in records]
    if any(name is not None for name in names):
        table = table.append_column(LABEL_NAME, pa.array(names, pa.string()))
    # image_id alone decides the order; the rest only breaks ties between duplicate ids.
    order = [(name, "ascending") for name in ("image_id", "uri", "source_row", "offset")]
    return table.sort_by(order)
