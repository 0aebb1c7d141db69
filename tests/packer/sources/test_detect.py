"""open_source: which kind a location holds, what it skips, and a one-line DatasetError
for every dataset-path mistake."""

from __future__ import annotations

import pytest

from packer.sources import DatasetError, open_source
from tests.packer import image_cases as cases
from tests.packer.format_cases import parquet_file, webdataset_tar


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


@pytest.mark.parametrize(
    ("layout", "path", "problem", "fix"),
    [
        ({}, "missing", "does not exist", "check the path"),
        ({}, "", "holds no images (it is empty)", "give a folder of class subfolders"),
        (
            {"a.txt": b"x", "b.txt": b"y", "c.md": b"z"},
            "",
            "holds no images (found 3 files: .md 1, .txt 2)",
            "WebDataset *.tar shards, or *.parquet files",
        ),
        ({"one.jpg": None}, "one.jpg", "is a single image file", "give the folder that holds it"),
    ],
    ids=["missing", "empty", "only-text", "single-image"],
)
def test_dataset_path_mistakes_are_one_line_dataset_errors_naming_problem_and_fix(
    tmp_path, layout, path, problem, fix
):
    for name, data in layout.items():
        (tmp_path / name).write_bytes(cases.photo_jpeg() if data is None else data)
    with pytest.raises(DatasetError) as raised:
        open_source(str(tmp_path / path))
    message = str(raised.value)
    assert "\n" not in message
    assert problem in message and fix in message


def test_a_stray_tar_or_parquet_in_an_image_folder_is_skipped_and_counted_not_fatal(tmp_path):
    for i in range(3):
        (tmp_path / "cat" / f"{i}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "cat" / f"{i}.jpg").write_bytes(cases.photo_jpeg(seed=i))
    (tmp_path / "cat" / "backup.tar").write_bytes(webdataset_tar())
    (tmp_path / "meta.parquet").write_bytes(parquet_file())
    (tmp_path / "notes.txt").write_text("a")
    (tmp_path / "LICENSE").write_text("b")
    source = open_source(str(tmp_path))
    assert source.kind == "image_folder"
    assert [r.image_id for r in source.records()] == ["cat/0.jpg", "cat/1.jpg", "cat/2.jpg"]
    assert source.skipped_by_extension() == {
        "(none)": 1,
        ".parquet": 1,
        ".tar": 1,
        ".txt": 1,
    }


def test_a_stray_image_beside_tar_shards_is_skipped_and_the_shards_read(tmp_path):
    for i in range(2):
        (tmp_path / f"shard-{i}.tar").write_bytes(webdataset_tar())
    (tmp_path / "preview.jpg").write_bytes(cases.photo_jpeg())
    source = open_source(str(tmp_path))
    assert source.kind == "webdataset"
    assert len(source.records()) == 2
    assert source.skipped_by_extension() == {".jpg": 1}
