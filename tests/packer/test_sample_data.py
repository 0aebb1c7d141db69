"""The sample dataset: deterministic, photo-like sizes, balanced learnable classes; and
its WebDataset conversion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packer.sample_data import (
    CLASSES,
    MAX_ASPECT,
    MAX_SIDE,
    MIN_ASPECT,
    MIN_SIDE,
    write_sample_dataset,
    write_webdataset_shards,
)
from packer.sources import open_source
from tests.packer import image_cases as cases


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample")
    return root, write_sample_dataset(root, 120, seed=7)


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(dataset, tmp_path):
    root, _ = dataset
    again = write_sample_dataset(tmp_path / "again", 120, seed=7)
    assert again["images"] == 120
    assert _digest(tmp_path / "again") == _digest(root)
    write_sample_dataset(tmp_path / "other", 120, seed=8)
    assert _digest(tmp_path / "other") != _digest(root)


def test_classes_are_balanced_and_summary_counts_them(dataset):
    root, summary = dataset
    assert summary["classes"] == list(CLASSES)
    assert summary["per_class"] == dict.fromkeys(CLASSES, 30)
    for name in CLASSES:
        assert len(list((root / name).glob("*.jpg"))) == 30


def test_sizes_and_aspects_stay_in_range_and_most_are_photo_sized(dataset):
    root, _ = dataset
    sizes = []
    for path in root.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.append(image.size)
    widths, heights = np.array(sizes).T
    assert widths.min() >= MIN_SIDE and heights.min() >= MIN_SIDE
    assert widths.max() <= MAX_SIDE and heights.max() <= MAX_SIDE
    aspects = widths / heights
    assert aspects.min() >= MIN_ASPECT * 0.98 and aspects.max() <= MAX_ASPECT * 1.02
    assert aspects.min() < 0.8 and aspects.max() > 1.8  # a real spread, both ways
    long_sides = np.maximum(widths, heights)
    assert np.mean((long_sides >= 200) & (long_sides <= 800)) > 0.7


def test_classes_differ_visibly_at_64_px(dataset):
    # A crude check that the classes carry signal at low resolution: shapes leave a
    # plain region around them, textures alternate everywhere, so the share of strong
    # horizontal edges differs between shape and texture classes on average.
    root, _ = dataset

    def edge_share(path: Path) -> float:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L").resize((64, 64)), dtype=np.float32)
        return float(np.mean(np.abs(np.diff(gray, axis=1)) > 40))

    share = {
        name: np.mean([edge_share(p) for p in (root / name).glob("*.jpg")]) for name in CLASSES
    }
    assert min(share["stripes"], share["checkers"]) > max(share["circles"], share["squares"])


def test_negative_image_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="non-negative"):
        write_sample_dataset(tmp_path, -1, seed=0)


def test_webdataset_shards_are_byte_identical_for_the_same_folder(tmp_path):
    write_sample_dataset(tmp_path / "folder", 12, seed=3)
    first = write_webdataset_shards(tmp_path / "folder", tmp_path / "one", images_per_shard=100)
    second = write_webdataset_shards(tmp_path / "folder", tmp_path / "two", images_per_shard=100)
    assert first[0].read_bytes() == second[0].read_bytes()


def test_webdataset_converter_keeps_files_that_differ_only_by_extension_apart(tmp_path):
    (tmp_path / "in" / "c").mkdir(parents=True)
    (tmp_path / "in" / "c" / "a.jpg").write_bytes(cases.photo_jpeg())
    (tmp_path / "in" / "c" / "a.png").write_bytes(cases.strip_png(4, 4))
    write_webdataset_shards(tmp_path / "in", tmp_path / "out")
    ids = sorted(r.image_id for r in open_source(str(tmp_path / "out")).records())
    assert ids == ["shard-000000.tar/c__a_jpg", "shard-000000.tar/c__a_png"]
