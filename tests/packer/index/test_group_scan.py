"""The index built per file group: sizes from metadata without reading images, checked
on request, and only new groups scanned when a source grows."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import packer.index.build as build_module
import packer.sources.reader as reader_module
from packer.index.build import IndexOptions, SizeMismatchError, build_index
from packer.index.cache import load_index, scan_report
from packer.index.image_index import ImageIndex, header_rejects
from packer.sources import open_source
from tests.packer import image_cases as cases


def _write_shard(path: Path, samples: list[tuple[str, bytes, dict | None]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image, meta in samples:
            members = [(f"{key}.jpg", image), (f"{key}.cls", b"1")]
            if meta is not None:
                members.append((f"{key}.json", json.dumps(meta).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _shards(root: Path, count: int, per_shard: int = 3, lie: str | None = None) -> None:
    for s in range(count):
        samples = []
        for i in range(per_shard):
            width, height = 40 + 8 * i, 30 + 4 * s
            meta = {"width": width, "height": height, "original_width": 999}
            if f"{s}/{i}" == lie:
                meta = {"width": height, "height": width}  # swapped: the header says not
            samples.append((f"{i:04d}", cases.photo_jpeg(width, height, seed=i), meta))
        _write_shard(root / f"shard-{s:04d}.tar", samples)


@pytest.fixture
def image_reads(monkeypatch) -> list[int]:
    """Bytes of image data the ByteReader returned, call by call."""
    reads: list[int] = []
    real = reader_module.ByteReader.read

    def counting(self, uri, offset, length, source_row):
        data = real(self, uri, offset, length, source_row)
        reads.append(len(data))
        return data

    monkeypatch.setattr(reader_module.ByteReader, "read", counting)
    return reads


def test_webdataset_json_sizes_are_taken_and_no_image_byte_is_read(tmp_path, image_reads):
    _shards(tmp_path / "wds", 3)
    index = load_index(str(tmp_path / "wds"), cache_dir=tmp_path / "cache")
    assert image_reads == [] and scan_report(index)["image_bytes_read"] == 0
    table = index.table
    assert table.column("width").to_pylist()[:3] == [40, 48, 56]
    assert table.column("height").to_pylist()[3:6] == [34, 34, 34]
    # The same sizes as the headers give.
    headers = build_index(open_source(str(tmp_path / "wds")), options=IndexOptions(False))
    assert headers.column("width").equals(table.column("width"))
    assert headers.column("height").equals(table.column("height"))
    assert sum(image_reads) > 0  # that one read the headers


def test_parquet_size_columns_are_taken_and_no_image_byte_is_read(tmp_path, image_reads):
    images = [cases.photo_jpeg(50 + i, 20 + i, seed=i) for i in range(6)]
    table = pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "w": pa.array([50 + i for i in range(6)], pa.int32()),
            "h": pa.array([20 + i if i != 4 else None for i in range(6)], pa.int64()),
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "a.parquet", row_group_size=2)
    options = IndexOptions(size_columns=("w", "h"))
    index = load_index(str(tmp_path / "pq"), cache_dir=tmp_path / "cache", options=options)
    assert index.table.column("width").to_pylist() == [50, 51, 52, 53, 54, 55]
    assert index.table.column("height").to_pylist() == [20, 21, 22, 23, 24, 25]
    # Row 4 has no height: only its header is read (its row group, from the file).
    assert len(image_reads) == 1


def test_verify_sizes_reads_a_seeded_sample_and_refuses_a_mismatch_naming_it(tmp_path):
    _shards(tmp_path / "ok", 4, per_shard=5)
    everything = IndexOptions(verify_sizes=1.0)
    index = load_index(str(tmp_path / "ok"), cache_dir=tmp_path / "cache", options=everything)
    assert index.num_rows == 20 and scan_report(index)["image_bytes_read"] > 0
    _shards(tmp_path / "bad", 4, per_shard=5, lie="2/3")
    assert load_index(str(tmp_path / "bad"), cache_dir=tmp_path / "c2").num_rows == 20
    with pytest.raises(SizeMismatchError, match="shard-0002.tar/0003"):
        load_index(str(tmp_path / "bad"), cache_dir=tmp_path / "c2", options=everything)
    # A seeded sample: half the images, the same half every time, a superset of a tenth's.
    keys = np.arange(10_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    half = build_module._sampled(keys, 0.5, 3)
    tenth = build_module._sampled(keys, 0.1, 3)
    assert 4700 < half.sum() < 5300 and not (tenth & ~half).any()
    assert np.array_equal(half, build_module._sampled(keys, 0.5, 3))


def test_adding_shards_scans_only_the_new_ones(tmp_path, monkeypatch):
    scanned: list[str] = []
    real = build_module.scan_group

    def counting(group, options):
        scanned.append(Path(group.name).name)
        return real(group, options)

    monkeypatch.setattr(build_module, "scan_group", counting)
    _shards(tmp_path / "wds", 3)
    first = load_index(str(tmp_path / "wds"), cache_dir=tmp_path / "cache")
    assert sorted(scanned) == ["shard-0000.tar", "shard-0001.tar", "shard-0002.tar"]
    scanned.clear()
    _shards(tmp_path / "more", 5)
    for name in ("shard-0003.tar", "shard-0004.tar"):
        (tmp_path / "wds" / name).write_bytes((tmp_path / "more" / name).read_bytes())
    grown = load_index(str(tmp_path / "wds"), cache_dir=tmp_path / "cache")
    assert sorted(scanned) == ["shard-0003.tar", "shard-0004.tar"]
    assert scan_report(grown) | {"seconds": 0} == {
        "groups": 5,
        "scanned": 2,
        "image_bytes_read": 0,
        "seconds": 0,
    }
    assert grown.table.slice(0, first.num_rows).equals(first.table.select(grown.table.column_names))
    assert json.loads(grown.schema.metadata[b"navit.class_names"]) == ["0", "1"]
    # Removing a shard rescans nothing either.
    scanned.clear()
    (tmp_path / "wds" / "shard-0001.tar").unlink()
    assert load_index(str(tmp_path / "wds"), cache_dir=tmp_path / "cache").num_rows == 12
    assert scanned == []


def test_the_resident_columns_take_13_bytes_an_image_and_the_rest_stays_in_the_file(tmp_path):
    _shards(tmp_path / "wds", 4, per_shard=5)
    index = load_index(str(tmp_path / "wds"), cache_dir=tmp_path / "cache")
    assert index.columns.nbytes == 13 * index.num_rows
    rows = np.array([7, 2])
    where = index.locations(rows)
    assert where.image_ids == ["shard-0001.tar/0002", "shard-0000.tar/0002"]
    assert where.uri[0].endswith("shard-0001.tar") and where.label.tolist() == [1, 1]
    view = index.view(np.array([2, 7, 11]))
    assert view.num_rows == 3 and view.table_rows().tolist() == [2, 7, 11]
    marked = view.marked({7: ("truncated", "cut")})
    assert marked.num_plannable == 2 and marked.plannable(np.array([2, 7])).tolist() == [
        True,
        False,
    ]
    assert header_rejects(marked) == [("shard-0001.tar/0002", "truncated", "cut")]
    assert ImageIndex.of(index) is index
