"""One checkpoint at many resolutions (deploy/resolution_sweep.py) on real sample images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploy.resolution_sweep import (
    evaluate_packed,
    format_table,
    parse_resolutions,
    sweep_dataset,
    write_plot,
)
from packer.config import ConfigError, fixed_resolution_config
from packer.fill.in_process import write_packed_folder
from packer.plan.sampling import target_grids
from tests.deploy.sample_model import PATCH, SampleModel
from trainer.checkpoint import load_trained_model

CHANCE = 0.25  # 4 classes


def test_model_scores_above_chance_on_held_out_images_at_a_trained_resolution(
    sample_model: SampleModel,
):
    model, _, _ = load_trained_model(sample_model.checkpoint)
    (row,) = sweep_dataset(model, sample_model.val, [48])  # trained on 32-64 px
    n = row.result.labelled
    assert n == sample_model.val.num_rows > 40
    # Three binomial standard deviations above guessing.
    assert row.result.accuracy > CHANCE + 3 * math.sqrt(CHANCE * (1 - CHANCE) / n)


@pytest.mark.parametrize("res_mode", ["area", "side"])
def test_tokens_per_image_are_the_grids_of_each_resolution(
    sample_model: SampleModel, res_mode: str
):
    model, _, _ = load_trained_model(sample_model.checkpoint)
    resolutions = [32, 64, 96, 128]
    rows = sweep_dataset(model, sample_model.val, resolutions, res_mode)
    widths = sample_model.val.column("width").to_numpy()
    heights = sample_model.val.column("height").to_numpy()
    for resolution, row in zip(resolutions, rows, strict=True):
        config = fixed_resolution_config(resolution, PATCH, res_mode)
        grid_h, grid_w = target_grids(config, widths, heights, np.full(len(widths), resolution))
        assert row.resolution == resolution and row.rejected == 0
        assert row.result.images == len(widths)
        assert row.result.tokens == int((grid_h * grid_w).sum())
    per_image = [row.result.tokens_per_image for row in rows]
    assert per_image == sorted(per_image) and len(set(per_image)) == len(per_image)


def test_the_same_checkpoint_gives_the_same_numbers_twice(sample_model: SampleModel):
    def scores() -> list[tuple]:
        model, _, _ = load_trained_model(sample_model.checkpoint)
        rows = sweep_dataset(model, sample_model.val, [32, 64, 96], batch_size=3)
        return [(r.result.accuracy, r.result.loss, r.result.tokens, r.result.images) for r in rows]

    assert scores() == scores()


def test_a_packed_folder_scores_as_the_same_images_packed_in_process(
    sample_model: SampleModel, tmp_path
):
    model, _, _ = load_trained_model(sample_model.checkpoint)
    config = fixed_resolution_config(64, PATCH)
    write_packed_folder(sample_model.val, config, tmp_path / "val")
    packed = evaluate_packed(model, tmp_path / "val")
    (swept,) = sweep_dataset(model, sample_model.val, [64])
    assert packed.resolution is None
    assert (packed.result.images, packed.result.tokens) == (
        swept.result.images,
        swept.result.tokens,
    )
    assert packed.result.accuracy == swept.result.accuracy
    assert packed.result.loss == pytest.approx(swept.result.loss, rel=1e-6)


def test_a_resolution_below_the_patch_is_refused_before_any_packing(sample_model: SampleModel):
    model, _, _ = load_trained_model(sample_model.checkpoint)
    with pytest.raises(ConfigError, match="resolution"):
        sweep_dataset(model, sample_model.val, [64, 8])


@pytest.mark.parametrize(
    ("text", "message"),
    [("64,,96", "empty"), ("64,9x", "not an integer"), ("0", "positive"), ("64,64", "twice")],
)
def test_bad_resolution_lists_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_resolutions(text)
    assert parse_resolutions(" 64, 96,128") == [64, 96, 128]


def test_table_and_plot_show_every_row(sample_model: SampleModel, tmp_path):
    model, _, _ = load_trained_model(sample_model.checkpoint)
    rows = sweep_dataset(model, sample_model.val, [32, 64])
    table = format_table(rows).splitlines()
    assert table[0].split()[0] == "resolution" and len(table) == 3
    assert [line.split()[0] for line in table[1:]] == ["32", "64"]
    path = write_plot(rows, tmp_path / "eval.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
