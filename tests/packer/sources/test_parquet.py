"""Parquet sources: rows, row groups, the image column rule, ids and labels."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packer.image.imageio import read_header
from packer.sample_data import write_parquet
from packer.sources import ByteReader, image_column, open_source
from tests.packer import image_cases as cases
from tests.packer.sources.source_cases import bytes_by_id


@pytest.mark.parametrize("hf_style", [False, True])
def test_parquet_rows_read_back_the_folder_images_across_row_groups(folder, tmp_path, hf_style):
    path = write_parquet(folder, tmp_path / "data.parquet", row_group_size=5, hf_style=hf_style)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    source = open_source(str(path))
    assert source.kind == "parquet"
    assert source.class_names == ["checkers", "circles", "squares", "stripes"]
    folder_bytes = bytes_by_id(open_source(str(folder)))
    folder_ids = sorted(folder_bytes)
    records = source.records()
    assert [r.image_id for r in records] == [f"data.parquet/{i}" for i in range(12)]
    assert [r.source_row for r in records] == list(range(12))
    reader = ByteReader()
    for record, folder_id in zip(records, folder_ids, strict=True):
        assert reader.read(record.uri, -1, -1, record.source_row) == folder_bytes[folder_id]
        assert record.label == source.class_names.index(folder_id.split("/")[0])
    # Out of order reads still hit the right row group.
    assert reader.read(records[0].uri, -1, -1, 11) == folder_bytes[folder_ids[11]]
    assert reader.read(records[0].uri, -1, -1, 2) == folder_bytes[folder_ids[2]]
    # The index scans the file as one group.
    assert [len(group.paths) for group in source.file_groups()] == [1]


def test_parquet_id_column_becomes_the_image_id(folder, tmp_path):
    path = write_parquet(folder, tmp_path / "ids.parquet", with_ids=True)
    ids = [r.image_id for r in open_source(str(path)).records()]
    assert ids == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))


def test_parquet_without_image_column_uses_first_binary_and_no_label_means_minus_one(tmp_path):
    table = pa.table(
        {"name": ["x", "y"], "img": pa.array([cases.photo_jpeg(), cases.strip_png(3, 9)])}
    )
    pq.write_table(table, tmp_path / "plain.parquet")
    source = open_source(str(tmp_path))
    records = source.records()
    assert [r.label for r in records] == [-1, -1]
    data = bytes_by_id(source)
    assert read_header(data["plain.parquet/1"]) == (3, 9)


def test_parquet_string_labels_map_to_sorted_class_names(tmp_path):
    image = cases.photo_jpeg()
    table = pa.table({"image": [image] * 3, "label": ["dog", "cat", "dog"]})
    pq.write_table(table, tmp_path / "s.parquet")
    source = open_source(str(tmp_path / "s.parquet"))
    assert source.class_names == ["cat", "dog"]
    assert [r.label for r in source.records()] == [1, 0, 1]


def test_image_column_rule_prefers_image_then_binary_then_struct_with_bytes():
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert image_column(pa.schema([("a", pa.binary()), ("image", struct)])) == ("image", True)
    assert image_column(pa.schema([("n", pa.int64()), ("a", pa.large_binary())])) == ("a", False)
    assert image_column(pa.schema([("pic", struct)])) == ("pic", True)
    with pytest.raises(ValueError, match="no image column"):
        image_column(pa.schema([("n", pa.int64())]))
