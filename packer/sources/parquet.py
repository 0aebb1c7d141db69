"""Parquet files: one image per row, read back by row (the reader keeps the row group
that holds it, since the fill step reads many rows of one file in order)."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from packer.sources.errors import DatasetError
from packer.sources.record import Record
from packer.sources.source import Source, numbered_classes

# Parquet columns that may hold a string id for each row, in order of preference.
_PARQUET_ID_COLUMNS = ("image_id", "key", "path")


@dataclass(frozen=True)
class _ParquetFileMeta:
    """What a Parquet source keeps of one file: ids, labels, row group bounds."""

    uri: str
    name: str  # relative to the source root
    num_rows: int
    ids: list[str | None] | None
    labels: list[Any] | None  # ints, strings or None
    row_group_starts: list[int]
    label_names: list[str] | None


@dataclass(frozen=True)
class ParquetSource(Source):
    """*.parquet: image bytes in `image` (binary, or a struct with `bytes` as HF datasets
    write), else the first binary column; label from `label` if present, else -1."""

    kind: ClassVar[str] = "parquet"
    member_extensions: ClassVar[tuple[str, ...]] = (".parquet",)

    @property
    def _files_meta(self) -> list[_ParquetFileMeta]:
        return self._scanned[0]

    @cached_property
    def _scanned(self) -> tuple[list[_ParquetFileMeta], list[Record]]:
        """Ids, labels and row groups of every readable file, and a stand-in record for
        each unreadable one. A schema without an image column is a ValueError instead:
        the dataset is misdescribed, not damaged."""
        metas: list[_ParquetFileMeta] = []
        unreadable: list[Record] = []
        for entry in self.files(self.member_extensions):
            uri = self.location.uri_of(entry.path)
            try:
                with self.location.fs.open_input_file(entry.path) as handle:
                    parquet = pq.ParquetFile(handle)
                    schema = parquet.schema_arrow
                    id_name = _id_column(schema)
                    columns = [name for name in (id_name, "label") if name in schema.names]
                    table = parquet.read(columns=columns)
                    starts = row_group_starts(parquet.metadata)
            except (OSError, pa.ArrowException):
                unreadable.append(Record.unreadable(self.location.relative(entry.path), uri))
                continue
            try:
                image_column(schema)
            except ValueError as error:
                raise DatasetError(f"parquet file {uri!r}: {error}") from error
            metas.append(
                _ParquetFileMeta(
                    uri=uri,
                    name=self.location.relative(entry.path),
                    num_rows=table.num_rows,
                    ids=table.column(id_name).to_pylist() if id_name else None,
                    labels=table.column("label").to_pylist() if "label" in columns else None,
                    row_group_starts=starts,
                    label_names=_hf_label_names(schema),
                )
            )
        return metas, unreadable

    @cached_property
    def _label_names(self) -> list[str] | None:
        """Class names: HF ClassLabel names, or the sorted values of a string label."""
        strings = {
            label
            for meta in self._files_meta
            for label in meta.labels or ()
            if isinstance(label, str)
        }
        if strings:
            return sorted(strings)
        return next((m.label_names for m in self._files_meta if m.label_names), None)

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if self._label_names is not None:
            return list(self._label_names)
        return numbered_classes(record.label for record in self.records())

    def records(self) -> list[Record]:
        lookup = {name: i for i, name in enumerate(self._label_names or ())}
        records = []
        for meta in self._files_meta:
            for row in range(meta.num_rows):
                label = meta.labels[row] if meta.labels is not None else None
                if isinstance(label, str):
                    label = lookup[label]
                image_id = meta.ids[row] if meta.ids is not None else None
                records.append(
                    Record(
                        image_id=image_id or f"{meta.name}/{row}",
                        uri=meta.uri,
                        offset=-1,
                        length=-1,
                        source_row=row,
                        label=-1 if label is None else int(label),
                    )
                )
        return records + self._scanned[1]

    def header_chunks(self, chunk_size: int = 256) -> list[list[Record]]:
        # One chunk per row group, so each thread decodes a row group once.
        by_file = {meta.uri: meta.row_group_starts for meta in self._files_meta}
        chunks: list[list[Record]] = []
        current: list[Record] = []
        current_group: tuple[str, int] | None = None
        for record in self.records():
            starts = by_file.get(record.uri)  # None for an unreadable file's stand-in
            group = (
                record.uri,
                bisect.bisect_right(starts, record.source_row) - 1 if starts else -1,
            )
            if group != current_group and current:
                chunks.append(current)
                current = []
            current_group = group
            current.append(record)
        if current:
            chunks.append(current)
        return chunks


class ParquetImages:
    """The image column of one Parquet file, read a row group at a time."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self._file = pq.ParquetFile(fs.open_input_file(path))
        self._column, self._is_struct = image_column(self._file.schema_arrow)
        self._starts = row_group_starts(self._file.metadata)
        self._num_rows = self._file.metadata.num_rows

    def locate(self, row: int) -> tuple[int, int]:
        """(row group, position in it): row 130 with groups of 100 -> (1, 30)."""
        if not 0 <= row < self._num_rows:
            raise IndexError(f"row {row} out of range for {self._num_rows} rows")
        group = bisect.bisect_right(self._starts, row) - 1
        return group, row - self._starts[group]

    def read_group(self, group: int) -> pa.Array:
        values = self._file.read_row_group(group, columns=[self._column]).column(0)
        values = values.combine_chunks()
        return values.field("bytes") if self._is_struct else values


def image_column(schema: pa.Schema) -> tuple[str, bool]:
    """(name, is_struct) of the column holding encoded image bytes.

    `image` if present; else the first binary column or struct column with a `bytes`
    field (Hugging Face `datasets` stores images as struct<bytes: binary, path: string>).
    """
    candidates = [schema.field("image")] if "image" in schema.names else list(schema)
    for candidate in candidates:
        kind = _bytes_kind(candidate.type)
        if kind is not None:
            return candidate.name, kind
    raise ValueError(
        "no image column: expected `image`, a binary column, or a struct with a `bytes` "
        f"field; schema is {schema}"
    )


def _bytes_kind(data_type: pa.DataType) -> bool | None:
    """False for a binary type, True for a struct with a binary `bytes` field, else None."""
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return False
    if pa.types.is_struct(data_type):
        index = data_type.get_field_index("bytes")
        if index >= 0 and _bytes_kind(data_type.field(index).type) is False:
            return True
    return None


def _id_column(schema: pa.Schema) -> str | None:
    for name in _PARQUET_ID_COLUMNS:
        if name in schema.names and pa.types.is_string(schema.field(name).type):
            return name
    return None


def _hf_label_names(schema: pa.Schema) -> list[str] | None:
    """ClassLabel names from the `huggingface` schema metadata `datasets` writes."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        label = features["label"]
        if label.get("_type") == "ClassLabel" and label.get("names"):
            return [str(name) for name in label["names"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def row_group_starts(metadata: pq.FileMetaData) -> list[int]:
    """First row of every row group: row groups of 100, 100, 50 rows -> [0, 100, 200]."""
    starts, total = [], 0
    for i in range(metadata.num_row_groups):
        starts.append(total)
        total += metadata.row_group(i).num_rows
    return starts
