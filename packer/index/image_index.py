"""The index as the packer holds it: a few resident columns per image, the rest on disk.

The planner needs each image's oriented size, its key and whether its header read, and
nothing else; those stay resident as numpy arrays (`PlannerColumns`, 13 bytes an image
while no side reaches 65536 px). Ids, locations, labels and messages stay in the index
table, memory-mapped from the cache (packer.index.cache), and are read for the few rows
a batch holds when its plan is handed to the fill (`ImageIndex.locations`).

An ImageIndex may be a view of part of the table: the held-out split (packer.plan.split)
keeps the training rows, sharing the resident columns. The reject ledger marks rows
rejected without copying a column (`ImageIndex.marked`): for table rows 0..9 with row 3
marked "truncated", the view still has 10 rows, `plannable` is False at row 3, and
`header_rejects` reports it with the ledger's reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from packer.image.notes import ImageNote
from packer.image.reject import REJECT_REASONS, Reject
from packer.index.table import INDEX_SCHEMA, image_keys, index_skipped

_REASON_CODE = {reason: code for code, reason in enumerate(REJECT_REASONS, start=1)}
_LOCATION_COLUMNS = ["image_id", "uri", "offset", "length", "source_row", "label"]
_U16_LIMIT = 1 << 16


@dataclass(frozen=True)
class PlannerColumns:
    """What the planner reads of every table row, resident: 2 + 2 + 8 + 1 bytes a row."""

    width: np.ndarray  # uint16, or uint32 once a side reaches 65536 px
    height: np.ndarray
    key: np.ndarray  # uint64: packer.index.table.image_key of the image id
    error: np.ndarray  # uint8: 0 = the header read, else 1 + REJECT_REASONS.index(reason)

    @classmethod
    def of_batches(cls, batches: Iterable[pa.RecordBatch], num_rows: int) -> PlannerColumns:
        """Filled batch by batch, so a 100M-row table never sits in memory whole; sides
        are uint16 (13 bytes a row at the peak too) until a batch holds one of 65536 px
        or more, when both become uint32."""
        width = np.zeros(num_rows, np.uint16)
        height = np.zeros(num_rows, np.uint16)
        key = np.zeros(num_rows, np.uint64)
        error = np.zeros(num_rows, np.uint8)
        start = 0
        for batch in batches:
            stop = start + batch.num_rows
            w = batch.column("width").to_numpy(zero_copy_only=False)
            h = batch.column("height").to_numpy(zero_copy_only=False)
            if (
                width.dtype == np.uint16
                and len(w)
                and max(int(w.max()), int(h.max())) >= _U16_LIMIT
            ):
                width, height = width.astype(np.uint32), height.astype(np.uint32)
            width[start:stop], height[start:stop] = w, h
            key[start:stop] = batch.column("key").to_numpy(zero_copy_only=False)
            error[start:stop] = _error_codes(batch.column("error"))
            start = stop
        if start != num_rows:
            raise ValueError(f"expected {num_rows} index rows, read {start}")
        return cls(width, height, key, error)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.width, self.height, self.key, self.error))


def _error_codes(errors: pa.Array) -> np.ndarray:
    codes = np.zeros(len(errors), np.uint8)
    failed = np.flatnonzero(errors.is_valid().to_numpy(zero_copy_only=False))
    if len(failed):
        reasons = errors.take(pa.array(failed)).to_pylist()
        codes[failed] = [_REASON_CODE[reason] for reason in reasons]
    return codes


@dataclass(frozen=True)
class Locations:
    """Where the images of some rows are, and what they are called (one item a row)."""

    image_ids: list[str]
    uri: list[str]
    offset: np.ndarray  # int64
    length: np.ndarray  # int64
    source_row: np.ndarray  # int64
    label: np.ndarray  # int64


class ImageIndex:
    """The index of a source: its table (on disk, memory-mapped), the planner's resident
    columns, and which table rows this index holds (all, or a view's)."""

    def __init__(
        self,
        table: pa.Table,
        columns: PlannerColumns,
        rows: np.ndarray | None = None,
        marks: Mapping[int, tuple[str, str]] | None = None,
    ) -> None:
        self.table = table
        self.columns = columns
        self.rows = rows  # this index's table rows, in order; None: every row
        self.marks = dict(marks or {})  # table row -> (reason, detail) from the ledger

    @classmethod
    def from_table(cls, table: pa.Table) -> ImageIndex:
        """An index over every row of an index table (INDEX_SCHEMA's columns)."""
        return cls(table, PlannerColumns.of_batches(table.to_batches(), table.num_rows))

    @classmethod
    def of(cls, index: ImageIndex | pa.Table) -> ImageIndex:
        return index if isinstance(index, ImageIndex) else cls.from_table(index)

    @classmethod
    def open(cls, path: str | Path) -> ImageIndex:
        """The index in an Arrow IPC file (packer.index.cache writes them): the table
        memory-mapped, the planner's columns read batch by batch."""
        mapped = pa.ipc.open_file(pa.memory_map(str(path)))
        table = mapped.read_all()
        if table.schema.remove_metadata() != INDEX_SCHEMA:
            raise ValueError(f"{path}: not an index file of this version")
        wanted = [INDEX_SCHEMA.get_field_index(n) for n in ("width", "height", "key", "error")]
        # A plain file, not the mapping: the pages read here are not left mapped (and
        # counted) in this process.
        with pa.OSFile(str(path)) as raw:
            reader = pa.ipc.open_file(raw, options=pa.ipc.IpcReadOptions(included_fields=wanted))
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            columns = PlannerColumns.of_batches(batches, table.num_rows)
        return cls(table, columns)

    # -- what it holds -----------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return self.table.num_rows if self.rows is None else len(self.rows)

    @property
    def schema(self) -> pa.Schema:
        """The table's schema, with the index metadata (source, classes, cache path)."""
        return self.table.schema

    def with_metadata(self, metadata: dict[bytes, bytes]) -> ImageIndex:
        table = self.table.replace_schema_metadata(metadata)
        return ImageIndex(table, self.columns, self.rows, self.marks)

    def table_rows(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The table rows (int64) at these positions of this index (all of them: None)."""
        if positions is None:
            if self.rows is None:
                return np.arange(self.table.num_rows, dtype=np.int64)
            return self.rows.astype(np.int64)
        positions = np.asarray(positions, np.int64)
        return positions if self.rows is None else self.rows[positions].astype(np.int64)

    def view(self, positions: np.ndarray) -> ImageIndex:
        """The rows at `positions` (increasing) of this index, sharing its columns."""
        rows = self.table_rows(positions)
        dtype = np.uint32 if self.table.num_rows < (1 << 32) else np.int64
        return ImageIndex(self.table, self.columns, rows.astype(dtype), self.marks)

    def marked(self, marks: Mapping[int, tuple[str, str]]) -> ImageIndex:
        """This index with more table rows rejected: {row: (reason, detail)}."""
        if not marks:
            return self
        return ImageIndex(self.table, self.columns, self.rows, {**self.marks, **marks})

    def plannable(self, rows: np.ndarray) -> np.ndarray:
        """For table rows: True where the header read and no mark rejects the image."""
        ok = self.columns.error[rows] == 0
        if self.marks:
            ok &= ~_in_sorted(rows, self._marked_rows)
        return ok

    @cached_property
    def num_plannable(self) -> int:
        """Images this index plans: those whose header read and that no mark rejects."""
        return self.num_rows - len(self._rejected_rows())

    @cached_property
    def _marked_rows(self) -> np.ndarray:
        return np.array(sorted(self.marks), np.int64)

    def rows_of(self, image_ids: list[str]) -> dict[str, list[int]]:
        """The table rows of this index holding each id (ids not in it are left out),
        found by key: one pass over the resident keys, then the few candidates' ids."""
        keys = np.sort(image_keys(image_ids))
        if self.rows is None:
            candidates = np.flatnonzero(_in_sorted(self.columns.key, keys))
        else:
            candidates = self.table_rows()[_in_sorted(self.columns.key[self.rows], keys)]
        ids = self.take(["image_id"], candidates).column("image_id").to_pylist()
        wanted = set(image_ids)
        found: dict[str, list[int]] = {}
        for image_id, row in zip(ids, candidates.tolist(), strict=True):
            if image_id in wanted:
                found.setdefault(image_id, []).append(row)
        return found

    def locations(self, rows: np.ndarray) -> Locations:
        """Ids, locations and labels of these table rows, read from the table.

        Record batch by record batch (`take`): the file is read where the rows are.
        """
        picked = self.take(_LOCATION_COLUMNS, rows)
        return Locations(
            image_ids=picked.column("image_id").to_pylist(),
            uri=picked.column("uri").to_pylist(),
            offset=_int64(picked.column("offset")),
            length=_int64(picked.column("length")),
            source_row=_int64(picked.column("source_row")),
            label=_int64(picked.column("label")),
        )

    def take(self, columns: list[str], rows: np.ndarray) -> pa.Table:
        """These columns at these table rows, in their order, read record batch by
        record batch (a take over the chunked table would join every chunk first)."""
        rows = np.asarray(rows, np.int64)
        batches, starts = self._record_batches
        chunk = np.searchsorted(starts, rows, side="right") - 1
        order = np.argsort(chunk, kind="stable")
        pieces = []
        for c in np.unique(chunk).tolist():
            local = rows[order][chunk[order] == c] - starts[c]
            pieces.append(batches[c].select(columns).take(pa.array(local)))
        schema = pa.schema([self.table.schema.field(name) for name in columns])
        picked = pa.Table.from_batches(pieces, schema).combine_chunks()
        return picked.take(pa.array(np.argsort(order, kind="stable")))

    @cached_property
    def _record_batches(self) -> tuple[list[pa.RecordBatch], np.ndarray]:
        batches = self.table.to_batches()
        starts = np.cumsum([0] + [b.num_rows for b in batches[:-1]]).astype(np.int64)
        return batches, starts

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of this index's rows (a marked row's `error` and `detail` are the
        mark's, as a header reject's own stay); reads the whole column: for small
        indexes and tests."""
        values = self.table.column(name)
        if self.rows is not None:
            values = values.take(pa.array(self.rows))
        if name in ("error", "detail") and self.marks:
            listed = values.to_pylist()
            for n, row in enumerate(self.table_rows().tolist()):
                mark = self.marks.get(row)
                if mark is not None and self.columns.error[row] == 0:
                    listed[n] = mark[0] if name == "error" else mark[1]
            values = pa.chunked_array([pa.array(listed, pa.string())])
        return values

    def _rejected_rows(self) -> np.ndarray:
        """Table rows of this index rejected before planning, in index order."""
        if self.rows is None:
            rejected = self.columns.error != 0
            if self.marks:
                rejected[self._marked_rows] = True
            return np.flatnonzero(rejected)
        rows = self.rows
        rejected = self.columns.error[rows] != 0
        if self.marks:
            rejected |= _in_sorted(rows, self._marked_rows)
        return rows[rejected].astype(np.int64)


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values[i] in sorted_set, by binary search: O(len(values) log len(sorted_set)), for
    a large array against a small set (np.isin would sort the large one)."""
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_set, values)
    at[at == len(sorted_set)] = 0
    return sorted_set[at] == values


def _int64(values: pa.ChunkedArray) -> np.ndarray:
    return values.to_numpy().astype(np.int64, copy=False)


def header_rejects(index: ImageIndex | pa.Table) -> list[Reject]:
    """Every image rejected before planning: its header could not be read, or the reject
    ledger marked it (packer.index.reject_ledger); a header reject keeps its own reason."""
    index = ImageIndex.of(index)
    rows = index._rejected_rows()
    picked = index.take(["image_id", "error", "detail"], rows)
    rejects = []
    for row, image_id, reason, detail in zip(
        rows.tolist(),
        picked.column("image_id").to_pylist(),
        picked.column("error").to_pylist(),
        picked.column("detail").to_pylist(),
        strict=True,
    ):
        if reason is None:
            reason, detail = index.marks[row]
        rejects.append(Reject(image_id, reason, detail or ""))
    return rejects


def header_notes(index: ImageIndex | pa.Table) -> list[ImageNote]:
    """The notes (Pillow warnings) of the header scan, image by image."""
    index = ImageIndex.of(index)
    notes = index.table.column("notes")
    noted = np.flatnonzero(notes.is_valid().to_numpy(zero_copy_only=False))
    if index.rows is not None:  # a view's rows increase: keep the noted ones among them
        noted = noted[_in_sorted(noted, index.rows.astype(np.int64))]
    picked = index.take(["image_id", "notes"], noted)
    return [
        ImageNote(image_id, note["kind"], note["detail"])
        for image_id, raw in zip(
            picked.column("image_id").to_pylist(), picked.column("notes").to_pylist(), strict=True
        )
        for note in json.loads(raw)
    ]


def index_stats(index: ImageIndex | pa.Table) -> dict[str, Any]:
    """{"images": n, "valid": k, "rejected": {reason: count}, "labelled": l, "notes":
    {kind: count}, "skipped": {extension: files}} for an index."""
    index = ImageIndex.of(index)
    rejected = Counter(reason for _, reason, _ in header_rejects(index))
    labels = index.table.column("label")
    if index.rows is not None:
        labels = labels.take(pa.array(index.rows))
    notes = Counter(note.kind for note in header_notes(index))
    return {
        "images": index.num_rows,
        "valid": index.num_rows - sum(rejected.values()),
        "rejected": dict(sorted(rejected.items())),
        "labelled": int(pc.sum(pc.greater_equal(labels, 0)).as_py() or 0),
        "notes": dict(sorted(notes.items())),
        "skipped": index_skipped(index),
    }
