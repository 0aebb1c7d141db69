"""The header-scan index: columns, labels, sizes, errors and the Parquet cache."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

import packer.index.build as build_module
from packer.image.imageio import read_header
from packer.index.build import HEADER_BYTES, build_index
from packer.index.cache import cache_path, load_index
from packer.index.image_index import ImageIndex, index_stats
from packer.index.table import INDEX_SCHEMA, INDEX_VERSION, image_key, index_class_names
from packer.sample_data import write_parquet, write_sample_dataset, write_webdataset_shards
from packer.sources import open_source
from packer.synthetic import imagenet_like_index
from tests.packer import image_cases as cases


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_sample_dataset(root, 10, seed=5)
    return root


@pytest.fixture
def counted_builds(monkeypatch) -> list[str]:
    """The file groups load_index scans, by first path (a cache hit scans none)."""
    calls: list[str] = []
    real = build_module.scan_group

    def counting(group, options):
        calls.append(group.name)
        return real(group, options)

    monkeypatch.setattr(build_module, "scan_group", counting)
    return calls


def _true_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for path in folder.rglob("*.jpg"):
        with Image.open(path) as image:
            sizes[path.relative_to(folder).as_posix()] = image.size
    return sizes


def test_folder_index_has_the_schema_sorted_ids_labels_and_header_sizes(folder):
    table = build_index(open_source(str(folder)), num_threads=4)
    assert table.schema.remove_metadata() == INDEX_SCHEMA
    ids = table.column("image_id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 10
    sizes = _true_sizes(folder)
    names = ["checkers", "circles", "squares", "stripes"]
    for row in table.to_pylist():
        assert (row["width"], row["height"]) == sizes[row["image_id"]]
        assert row["label"] == names.index(row["image_id"].split("/")[0])
        assert row["key"] == image_key(row["image_id"])
        assert row["error"] is None
    assert index_class_names(table) == names


def test_tar_and_parquet_indexes_give_the_same_sizes_and_labels_as_the_folder(folder, tmp_path):
    reference = build_index(open_source(str(folder)))
    expected = sorted(
        zip(
            reference.column("width").to_pylist(),
            reference.column("height").to_pylist(),
            reference.column("label").to_pylist(),
            strict=True,
        )
    )
    write_webdataset_shards(folder, tmp_path / "wds", images_per_shard=4)
    write_parquet(folder, tmp_path / "pq" / "d.parquet", row_group_size=3)
    for uri, id_prefix in [(tmp_path / "wds", "shard-0000"), (tmp_path / "pq", "d.parquet/")]:
        table = build_index(open_source(str(uri)))
        got = sorted(
            zip(
                table.column("width").to_pylist(),
                table.column("height").to_pylist(),
                table.column("label").to_pylist(),
                strict=True,
            )
        )
        assert got == expected, uri
        assert all(i.startswith(id_prefix) for i in table.column("image_id").to_pylist())
        assert table.column("error").null_count == table.num_rows


def test_index_ids_of_tar_and_parquet_follow_the_naming_rules(folder, tmp_path):
    write_webdataset_shards(folder, tmp_path / "wds", images_per_shard=100)
    table = build_index(open_source(str(tmp_path / "wds")))
    row = table.slice(0, 1).to_pylist()[0]
    assert row["image_id"] == "shard-000000.tar/checkers__checkers_000000"
    assert row["uri"] == str(tmp_path / "wds" / "shard-000000.tar")
    assert row["offset"] % 512 == 0 and row["length"] > 0 and row["source_row"] == -1
    write_parquet(folder, tmp_path / "d.parquet")
    table = build_index(open_source(str(tmp_path / "d.parquet")))
    assert table.column("image_id").to_pylist()[:3] == ["d.parquet/0", "d.parquet/1", "d.parquet/2"]
    assert table.column("source_row").to_pylist()[:3] == [0, 1, 2]
    assert set(table.column("offset").to_pylist()) == {-1}


def test_corrupt_files_get_their_header_reason_and_are_not_fatal(tmp_path):
    expected = cases.write_odd_images(tmp_path)
    table = build_index(open_source(str(tmp_path)))
    assert table.num_rows == len(expected)
    ids, reasons = table.column("image_id").to_pylist(), table.column("error").to_pylist()
    errors = dict(zip(ids, reasons, strict=True))
    for relative, reason in expected.items():
        # A truncated file has an intact header: only decoding finds it.
        header_reason = None if reason == "truncated" else reason
        assert errors[relative] == header_reason, relative
    for row in table.to_pylist():
        if row["error"] is not None:
            assert (row["width"], row["height"]) == (0, 0)
    exif = table.filter(pa.compute.equal(table["image_id"], "good/exif_rotated.jpg"))
    assert (exif["width"][0].as_py(), exif["height"][0].as_py()) == (32, 64)
    stats = index_stats(table)
    assert stats["images"] == len(expected)
    assert stats["rejected"] == {
        "bad_dimensions": 2,
        "decompression_bomb": 1,
        "empty": 1,
        "not_an_image": 1,
    }
    assert stats["valid"] == len(expected) - 5


def test_header_beyond_the_first_64_kib_is_found_by_reading_more(tmp_path):
    # A JPEG whose frame header sits after a big comment segment stuffed in front of it
    # (APP/COM segments come before SOF).
    data = cases.photo_jpeg(90, 70)
    comment = b"x" * 60_000
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    big = data[:2] + segment + segment + data[2:]
    assert len(big) > HEADER_BYTES and read_header(big) == (90, 70)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big.jpg").write_bytes(big)
    table = build_index(open_source(str(tmp_path)))
    assert table.to_pylist()[0]["width"] == 90 and table.to_pylist()[0]["error"] is None


def test_a_folder_file_in_a_weakly_signed_format_is_read_as_its_name_says(tmp_path):
    from tests.packer.format_cases import fits_gradient, tiny_image

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.tga").write_bytes(tiny_image("TGA"))
    (tmp_path / "a" / "sky.fits").write_bytes(fits_gradient(30, 20))
    (tmp_path / "a" / "old.bin").write_bytes(tiny_image("TGA"))  # no name: skipped
    table = build_index(open_source(str(tmp_path)))
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == ["a/old.tga", "a/sky.fits"]
    assert (rows["a/old.tga"]["width"], rows["a/old.tga"]["height"]) == (24, 16)
    assert (rows["a/sky.fits"]["width"], rows["a/sky.fits"]["height"]) == (30, 20)
    assert index_stats(table)["skipped"] == {".bin": 1}


def test_load_index_cache_hit_returns_the_same_table_without_rescanning(
    folder, tmp_path, counted_builds
):
    first = load_index(str(folder), cache_dir=tmp_path)
    assert len(counted_builds) == 1  # ten files: one group
    assert cache_path(str(folder), tmp_path).exists()
    second = load_index(str(folder), cache_dir=tmp_path)
    assert len(counted_builds) == 1  # no rescan
    assert second.table.equals(first.table, check_metadata=True)
    metadata = second.schema.metadata
    assert json.loads(metadata[b"navit.class_names"])[0] == "checkers"
    assert metadata[b"navit.fingerprint"].startswith(f"v{INDEX_VERSION}:".encode())


def test_adding_a_file_invalidates_the_cached_index(tmp_path, counted_builds):
    data = tmp_path / "data"
    write_sample_dataset(data, 4, seed=1)
    cache = tmp_path / "cache"
    assert load_index(str(data), cache_dir=cache).num_rows == 4
    (data / "circles" / "new.jpg").write_bytes(cases.photo_jpeg())
    table = load_index(str(data), cache_dir=cache)
    assert table.num_rows == 5 and len(counted_builds) == 2
    assert "circles/new.jpg" in table.column("image_id").to_pylist()
    load_index(str(data), cache_dir=cache)
    assert len(counted_builds) == 2


def test_cache_dir_defaults_to_navit_cache_dir(tmp_path, monkeypatch, folder):
    monkeypatch.setenv("NAVIT_CACHE_DIR", str(tmp_path / "env-cache"))
    load_index(str(folder))
    assert list((tmp_path / "env-cache").glob("*/index.arrow"))


def test_a_corrupt_cache_file_is_rebuilt_not_fatal(folder, tmp_path, counted_builds):
    cache_path(str(folder), tmp_path).parent.mkdir(parents=True, exist_ok=True)
    cache_path(str(folder), tmp_path).write_bytes(b"not parquet")
    assert load_index(str(folder), cache_dir=tmp_path).num_rows == 10
    assert len(counted_builds) == 1


def test_index_stats_counts_images_valid_and_rejected_by_reason():
    table = imagenet_like_index(5).table
    table = table.set_column(
        table.schema.get_field_index("error"),
        "error",
        pa.array([None, "empty", None, "empty", "truncated"], pa.string()),
    )
    stats = index_stats(ImageIndex.from_table(table))
    assert stats["images"] == 5 and stats["valid"] == 2
    assert stats["rejected"] == {"empty": 2, "truncated": 1}


def test_a_broken_tar_shard_keeps_its_readable_members_and_counts_as_rejected(folder, tmp_path):
    shards = write_webdataset_shards(folder, tmp_path / "wds", images_per_shard=5)
    whole = shards[1].read_bytes()
    shards[1].write_bytes(whole[: len(whole) // 2] + b"\x01" * 700)  # cut, then garbage
    table = build_index(open_source(str(tmp_path / "wds")))
    ids = table.column("image_id").to_pylist()
    assert sum(i.startswith("shard-000000.tar/") for i in ids) == 5
    broken = [row for row in table.to_pylist() if row["image_id"].startswith("shard-000001.tar/")]
    assert 0 < len(broken) < 6
    errors = {row["image_id"]: row["error"] for row in broken}
    assert errors.pop("shard-000001.tar/#unreadable") == "read_error"
    assert errors  # the members before the damage are still there


def test_an_unreadable_parquet_file_is_a_rejected_entry_not_a_crash(folder, tmp_path):
    write_parquet(folder, tmp_path / "pq" / "a.parquet")
    (tmp_path / "pq" / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    table = build_index(open_source(str(tmp_path / "pq")))
    assert table.num_rows == 11
    assert index_stats(table)["rejected"] == {"read_error": 1}
    assert "b.parquet/#unreadable" in table.column("image_id").to_pylist()


def test_header_rejects_carry_the_readers_message_and_warnings_become_notes(tmp_path, capfd):
    from packer.index.image_index import header_notes, header_rejects
    from packer.index.table import index_skipped
    from tests.packer.format_cases import corrupt_exif_jpeg

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bomb.png").write_bytes(cases.png_header(100_000, 100_000))
    (tmp_path / "a" / "warned.png").write_bytes(cases.png_header(10_000, 10_000))
    (tmp_path / "a" / "exif.jpg").write_bytes(corrupt_exif_jpeg())
    (tmp_path / "a" / "notes.txt").write_text("x")
    table = build_index(open_source(str(tmp_path)), num_threads=4)
    ((image_id, reason, detail),) = header_rejects(table)
    assert (image_id, reason) == ("a/bomb.png", "decompression_bomb")
    assert "100000x100000" in detail
    notes = {(n.image_id, n.kind) for n in header_notes(table)}
    assert notes == {
        ("a/warned.png", "decompression_bomb_warning"),
        ("a/exif.jpg", "corrupt_metadata"),
    }
    assert index_skipped(table) == {".txt": 1}
    stats = index_stats(table)
    assert stats["skipped"] == {".txt": 1}
    assert stats["notes"] == {"corrupt_metadata": 1, "decompression_bomb_warning": 1}
    assert capfd.readouterr().err == ""


def test_every_image_of_a_threaded_scan_gets_its_warning_as_a_note(tmp_path, capfd):
    import io
    import tarfile

    from packer.index.image_index import header_notes

    # 16 shards scanned on 8 threads at once; every header warns (a large PNG).
    header = cases.png_header(10_000, 10_000)
    for s in range(16):
        with tarfile.open(tmp_path / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(5):
                member = tarfile.TarInfo(f"{i:04d}.png")
                member.size = len(header)
                tar.addfile(member, io.BytesIO(header))
    table = build_index(open_source(str(tmp_path)), num_threads=8)
    noted = {n.image_id for n in header_notes(table) if n.kind == "decompression_bomb_warning"}
    assert len(noted) == table.num_rows == 80
    assert capfd.readouterr().err == ""
