"""The run's validation split (deploy/pretrain/validation.py): packed once, held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploy.pretrain.options import PretrainOptions
from deploy.pretrain.validation import pack_validation
from packer.index.cache import load_index
from packer.plan.sampling import target_grids
from packer.plan.split import split_index
from packer.sample_data import write_sample_dataset
from trainer.data import PackedFolder, read_arrow_file


def test_the_held_out_images_are_packed_once_at_max_res(tmp_path: Path) -> None:
    write_sample_dataset(tmp_path / "data", 60, seed=2)
    index = load_index(str(tmp_path / "data"), cache_dir=tmp_path / "cache")
    options = PretrainOptions(
        str(tmp_path / "data"),
        val_fraction=0.2,
        val_seed=1,
        overrides=("max_res=96", "seq_len=128", "batch_size=2"),
    )
    val = pack_validation(index, options, tmp_path / "run")
    _, expected = split_index(index, 0.2, 1)
    assert val.folder == tmp_path / "run" / "val" and val.resolution == 96
    assert val.held_out == val.packed == expected.num_rows > 0
    ids, grids = [], {}
    for path in PackedFolder(val.folder).batch_files(0):
        batch = read_arrow_file(path)
        ids += batch.image_ids
        grids.update(
            zip(
                batch.image_ids,
                zip(batch.image_grid_h, batch.image_grid_w, strict=True),
                strict=True,
            )
        )
    assert sorted(ids) == sorted(expected.column("image_id").to_pylist())
    config = options.packing_config().replace(min_res=96)
    widths, heights = expected.column("width").to_numpy(), expected.column("height").to_numpy()
    grid_h, grid_w = target_grids(config, widths, heights, np.full(len(widths), 96.0))
    for image_id, h, w in zip(expected.column("image_id").to_pylist(), grid_h, grid_w, strict=True):
        assert grids[image_id] == (h, w)
