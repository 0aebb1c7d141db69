"""Sources: kind detection, ids, labels and byte locations for folders, tars and Parquet."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packer.imageio import RejectedImage, read_header
from packer.sample_data import write_parquet, write_sample_dataset, write_webdataset_shards
from packer.sources import ByteReader, image_column, normalize_uri, open_source
from tests.packer import image_cases as cases


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_sample_dataset(root, 12, seed=3)
    return root


def _bytes_by_id(source) -> dict[str, bytes]:
    reader = ByteReader()
    return {r.image_id: reader.read(r.uri, r.offset, r.length, r.row) for r in source.records()}


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_image_folder_labels_are_sorted_class_folder_indices(folder):
    source = open_source(str(folder))
    assert source.kind == "image_folder"
    assert source.class_names == ["checkers", "circles", "squares", "stripes"]
    records = source.records()
    assert len(records) == 12
    for record in records:
        assert record.label == source.class_names.index(record.image_id.split("/")[0])
        assert (record.offset, record.length, record.row) == (-1, -1, -1)
        assert record.uri == str(folder / record.image_id)


def test_image_folder_reader_returns_each_whole_file(folder):
    source = open_source(str(folder))
    for image_id, data in _bytes_by_id(source).items():
        assert data == (folder / image_id).read_bytes()


def test_images_in_the_root_get_label_minus_one_and_nested_ones_their_class(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()  # empty class folder: still takes index 0, as torchvision
    (tmp_path / "loose.jpg").write_bytes(cases.photo_jpeg())
    (tmp_path / "b" / "deep" / "x.png").write_bytes(cases.strip_png(2, 3))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path))
    assert source.class_names == ["a", "b"]
    labels = {r.image_id: r.label for r in source.records()}
    assert labels == {"loose.jpg": -1, "b/deep/x.png": 1}


def test_webdataset_groups_members_by_key_and_reads_cls_labels(tmp_path):
    jpg, png = cases.photo_jpeg(40, 30), cases.strip_png(5, 7)
    _write_tar(
        tmp_path / "shard-a.tar",
        {
            "0001.jpg": jpg,
            "0001.cls": b"3\n",
            "sub/0002.png": png,
            "sub/0002.cls": b"1",
            "0003.jpg": jpg,  # no .cls: label -1
            "0003.json": b"{}",
            "0004.seg.png": png,  # "seg.png" is not an image extension
            "0005.png": png,  # jpg preferred over png for the same key
            "0005.jpg": jpg,
        },
    )
    source = open_source(str(tmp_path))
    assert source.kind == "webdataset"
    records = {r.image_id: r for r in source.records()}
    assert sorted(records) == [
        "shard-a.tar/0001",
        "shard-a.tar/0003",
        "shard-a.tar/0005",
        "shard-a.tar/sub/0002",
    ]
    assert records["shard-a.tar/0001"].label == 3
    assert records["shard-a.tar/sub/0002"].label == 1
    assert records["shard-a.tar/0003"].label == -1
    assert source.class_names == ["0", "1", "2", "3"]
    data = _bytes_by_id(source)
    assert data["shard-a.tar/0001"] == jpg
    assert data["shard-a.tar/sub/0002"] == png
    assert data["shard-a.tar/0005"] == jpg
    assert records["shard-a.tar/0001"].length == len(jpg)


def test_webdataset_from_converted_folder_has_the_same_images_and_labels(folder, tmp_path):
    shards = write_webdataset_shards(folder, tmp_path / "wds", images_per_shard=5)
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    source = open_source(str(tmp_path / "wds"))
    folder_source = open_source(str(folder))
    by_content = {data: image_id for image_id, data in _bytes_by_id(folder_source).items()}
    labels = {r.image_id: r.label for r in folder_source.records()}
    records = {r.image_id: r for r in source.records()}
    for image_id, data in _bytes_by_id(source).items():
        original = by_content[data]
        assert records[image_id].label == labels[original]
    # A single shard file is a source too.
    assert len(open_source(str(shards[0])).records()) == 5


def test_webdataset_shards_are_byte_identical_for_the_same_folder(folder, tmp_path):
    first = write_webdataset_shards(folder, tmp_path / "one", images_per_shard=100)
    second = write_webdataset_shards(folder, tmp_path / "two", images_per_shard=100)
    assert first[0].read_bytes() == second[0].read_bytes()


@pytest.mark.parametrize("hf_style", [False, True])
def test_parquet_rows_read_back_the_folder_images_across_row_groups(folder, tmp_path, hf_style):
    path = write_parquet(folder, tmp_path / "data.parquet", row_group_size=5, hf_style=hf_style)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    source = open_source(str(path))
    assert source.kind == "parquet"
    assert source.class_names == ["checkers", "circles", "squares", "stripes"]
    folder_bytes = _bytes_by_id(open_source(str(folder)))
    folder_ids = sorted(folder_bytes)
    records = source.records()
    assert [r.image_id for r in records] == [f"data.parquet/{i}" for i in range(12)]
    assert [r.row for r in records] == list(range(12))
    reader = ByteReader()
    for record, folder_id in zip(records, folder_ids, strict=True):
        assert reader.read(record.uri, -1, -1, record.row) == folder_bytes[folder_id]
        assert record.label == source.class_names.index(folder_id.split("/")[0])
    # Out of order reads still hit the right row group.
    assert reader.read(records[0].uri, -1, -1, 11) == folder_bytes[folder_ids[11]]
    assert reader.read(records[0].uri, -1, -1, 2) == folder_bytes[folder_ids[2]]
    # Each chunk of the header scan is one row group.
    assert [len(chunk) for chunk in source.header_chunks()] == [5, 5, 2]


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
    data = _bytes_by_id(source)
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


def test_file_uri_and_relative_path_name_the_same_source(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    assert normalize_uri(folder.name) == str(folder)
    assert normalize_uri(f"file://{folder}") == str(folder)
    assert open_source(f"file://{folder}").uri == str(folder)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no images"),
        ({"readme.txt": b"hi"}, "holds no images"),
        ({"a.tar": b"", "b.parquet": b""}, "mixes kinds"),
    ],
)
def test_unknown_or_empty_sources_raise_a_clear_value_error(tmp_path, layout, message):
    for name, data in layout.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        open_source(str(tmp_path))


def test_missing_source_and_single_image_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "one.jpg").write_bytes(cases.photo_jpeg())
    with pytest.raises(ValueError, match="single image"):
        open_source(str(tmp_path / "one.jpg"))


def test_reader_turns_io_failures_into_read_error(tmp_path):
    reader = ByteReader()
    with pytest.raises(RejectedImage) as info:
        reader.read(str(tmp_path / "missing.jpg"), -1, -1, -1)
    assert info.value.reason == "read_error"
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [b"x"]}), parquet)
    with pytest.raises(RejectedImage) as info:
        reader.read(str(parquet), -1, -1, 5)
    assert info.value.reason == "read_error"


def test_reader_reads_byte_ranges_and_file_uris(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)))
    reader = ByteReader()
    assert reader.read(str(path), 10, 4, -1) == bytes([10, 11, 12, 13])
    assert reader.read(f"file://{path}", 250, 100, -1) == bytes(range(250, 256))  # short
    assert reader.read(f"file://{path}", -1, -1, -1) == bytes(range(256))


def test_reader_pickles_to_a_fresh_reader(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abcdef")
    reader = ByteReader()
    reader.read(str(path), 0, 2, -1)  # opens and caches a handle
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(str(path), 2, 2, -1) == b"cd"


def test_fingerprint_changes_when_a_file_changes_and_not_otherwise(folder, tmp_path):
    write_sample_dataset(tmp_path, 4, seed=0)
    before = open_source(str(tmp_path)).fingerprint()
    assert open_source(str(tmp_path)).fingerprint() == before
    (tmp_path / "circles" / "extra.jpg").write_bytes(cases.photo_jpeg())
    assert open_source(str(tmp_path)).fingerprint() != before


def test_webdataset_converter_keeps_files_that_differ_only_by_extension_apart(tmp_path):
    (tmp_path / "in" / "c").mkdir(parents=True)
    (tmp_path / "in" / "c" / "a.jpg").write_bytes(cases.photo_jpeg())
    (tmp_path / "in" / "c" / "a.png").write_bytes(cases.strip_png(4, 4))
    write_webdataset_shards(tmp_path / "in", tmp_path / "out")
    ids = sorted(r.image_id for r in open_source(str(tmp_path / "out")).records())
    assert ids == ["shard-000000.tar/c__a_jpg", "shard-000000.tar/c__a_png"]
