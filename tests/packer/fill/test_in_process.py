"""Packing at one fixed resolution in this process (packer/fixed_resolution.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from packer.config import ConfigError, fixed_resolution_config
from packer.contract.schema import from_record_batch
from packer.fill.in_process import pack_in_process, write_packed_folder
from packer.index.cache import load_index
from packer.plan.sampling import target_grids
from packer.sample_data import write_sample_dataset


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory) -> pa.Table:
    root = tmp_path_factory.mktemp("fixed")
    write_sample_dataset(root / "data", 24, seed=5)
    return load_index(str(root / "data"), cache_dir=root / "cache")


@pytest.mark.parametrize("res_mode", ["area", "side"])
def test_every_image_gets_the_target_grid_of_the_resolution(sample_index, res_mode):
    widths = sample_index.column("width").to_numpy()
    heights = sample_index.column("height").to_numpy()
    ids = sample_index.column("image_id").to_pylist()
    for resolution in (32, 64, 128):
        config = fixed_resolution_config(resolution, 16, res_mode)
        grid_h, grid_w = target_grids(config, widths, heights, np.full(len(ids), resolution, float))
        expected = {i: (int(h), int(w)) for i, h, w in zip(ids, grid_h, grid_w, strict=True)}
        packed = {}
        for result in pack_in_process(sample_index, config):
            assert not result.rejected
            batch = result.packed
            for image_id, h, w in zip(
                batch.image_ids, batch.image_grid_h, batch.image_grid_w, strict=True
            ):
                packed[image_id] = (int(h), int(w))
            # Nothing dropped: every image has all of its grid's tokens.
            assert batch.real_tokens == int((batch.image_grid_h * batch.image_grid_w).sum())
        assert packed == expected


def test_the_largest_image_fits_the_default_sequence():
    assert fixed_resolution_config(128, 16).seq_len == 256  # the minimum
    assert fixed_resolution_config(384, 16).seq_len == 576  # (384 / 16)^2
    assert fixed_resolution_config(384, 16, seq_len=1024).seq_len == 1024
    config = fixed_resolution_config(96, 16, "side", batch_size=3, seed=4)
    assert (config.min_res, config.max_res, config.token_drop) == (96, 96, "none")
    assert (config.res_mode, config.batch_size, config.seed) == ("side", 3, 4)


@pytest.mark.parametrize("resolution", [0, 8, 15, 64.5])
def test_a_resolution_below_the_patch_size_is_an_error_naming_it(resolution):
    with pytest.raises(ConfigError, match="resolution"):
        fixed_resolution_config(resolution, 16)


def test_packed_folder_holds_every_image_once_and_replaces_an_older_pack(sample_index, tmp_path):
    config = fixed_resolution_config(64, 16, batch_size=2)
    out = tmp_path / "val"
    stale = out / "epoch-000" / "batch-000099.arrow"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    stats = write_packed_folder(sample_index, config, out)
    files = sorted((out / "epoch-000").glob("batch-*.arrow"))
    assert [f.name for f in files] == [f"batch-{j:06d}.arrow" for j in range(len(files))]
    ids = []
    for path in files:
        with pa.OSFile(str(path), "rb") as handle:
            ids += from_record_batch(pa.ipc.open_file(handle).get_batch(0)).image_ids
    assert sorted(ids) == sorted(sample_index.column("image_id").to_pylist())
    assert stats.to_dict()["images_packed"] == len(ids)


def test_same_index_and_config_pack_the_same_bytes(sample_index, tmp_path: Path):
    config = fixed_resolution_config(48, 16)
    first = [r.packed for r in pack_in_process(sample_index, config)]
    second = [r.packed for r in pack_in_process(sample_index, config)]
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.patches, b.patches) and a.image_ids == b.image_ids
