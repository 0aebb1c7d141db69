"""Parquet files: one image per row, read back by row (the reader keeps the row group
that holds it, since the fill step reads many rows of one file in order)."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from packer.sources.errors import DatasetError
from packer.sources.record import Record
from packer.sources.source import SIZE_COLUMNS, FileGroup, Source, numbered_classes

# Parquet columns that may hold a string id for each row, in order of preference.
_PARQUET_ID_COLUMNS = ("image_id", "key", "path")


@dataclass(frozen=True)
class ParquetSource(Source):
    """*.parquet: image bytes in `image` (binary, or a struct with `bytes` as HF datasets
    write), else the first binary column; label from `label` if present, else -1; each
    image's size from integer `width` and `height` columns when the file has them (the
    LAION/DataComp metadata convention; other names: `size_columns`), so the index reads
    no image bytes for it."""

    kind: ClassVar[str] = "parquet"
    member_extensions: ClassVar[tuple[str, ...]] = (".parquet",)

    @cached_property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """Class names: the sorted values of a string label, or HF ClassLabel names."""
        records = self.records()
        texts = self.label_texts(records)
        if texts:
            return texts
        for group in self.file_groups():
            names = self.label_names_of(group)
            if names:
                return names
        return numbered_classes(record.label for record in records)

    def label_names_of(self, group: FileGroup) -> list[str] | None:
        """The Hugging Face ClassLabel names a group's file declares, if any."""
        try:
            with self.location.fs.open_input_file(group.paths[0]) as handle:
                return _hf_label_names(pq.ParquetFile(handle).schema_arrow)
        except (OSError, pa.ArrowException):
            return None

    def group_records(
        self, group: FileGroup, size_columns: tuple[str, str] | None = SIZE_COLUMNS
    ) -> list[Record]:
        return [r for path in group.paths for r in self._file_records(path, size_columns)]

    def _file_records(self, path: str, size_columns: tuple[str, str] | None) -> list[Record]:
        uri = self.location.uri_of(path)
        name = self.location.relative(path)
        try:
            with self.location.fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                id_name = _id_column(schema)
                sizes = _size_columns(schema, size_columns)
                wanted = [id_name, "label", *sizes]
                columns = [c for c in wanted if c is not None and c in schema.names]
                table = parquet.read(columns=columns)
        except (OSError, pa.ArrowException):
            return [Record.unreadable(name, uri)]
        try:
            image_column(schema)
        except ValueError as error:
            raise DatasetError(f"parquet file {uri!r}: {error}") from error
        n = table.num_rows
        ids = table.column(id_name).to_pylist() if id_name else [None] * n
        labels = table.column("label").to_pylist() if "label" in columns else [None] * n
        widths = heights = [None] * n
        if sizes:
            widths, heights = (table.column(c).to_pylist() for c in sizes)
        records = []
        for row, (image_id, label, width, height) in enumerate(
            zip(ids, labels, widths, heights, strict=True)
        ):
            known = width is not None and height is not None and width > 0 and height > 0
            records.append(
                Record(
                    image_id=image_id or f"{name}/{row}",
                    uri=uri,
                    offset=-1,
                    length=-1,
                    source_row=row,
                    label=label if isinstance(label, int) else -1,
                    width=width if known else -1,
                    height=height if known else -1,
                    label_name=label if isinstance(label, str) else None,
                )
            )
        return records


def _size_columns(schema: pa.Schema, names: tuple[str, str] | None) -> tuple[str, ...]:
    """The size columns to read: both named ones when they hold integers, else none."""
    if names is None or not all(n in schema.names for n in names):
        return ()
    if not all(pa.types.is_integer(schema.field(n).type) for n in names):
        return ()
    return tuple(names)


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
