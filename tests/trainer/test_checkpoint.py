"""checkpoint.pt: atomic writes, the resume cursor (old format too), RNG state round trip."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from packer.contract.cursor import Cursor
from tests.trainer.trainer_synthetic import write_learnable_folder
from trainer.checkpoint import (
    load_checkpoint,
    load_trained_model,
    resume_cursor,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.config import TrainConfig
from trainer.train import train


def test_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(Exception):  # noqa: B017 whatever pickling raises
        save_checkpoint(path, {"step": 2, "bad": lambda: None})  # a lambda cannot be pickled
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_missing_checkpoint_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        load_checkpoint(tmp_path / "absent" / "checkpoint.pt")


def test_resume_cursor_gives_each_rank_the_stored_position():
    state = {"cursor": Cursor(0, 2, epoch=1, next_batch=4).to_dict()}
    assert resume_cursor(state, 1, 2) == Cursor(1, 2, epoch=1, next_batch=4)
    assert resume_cursor(state, 0, 2) == Cursor(0, 2, epoch=1, next_batch=4)


def test_resume_cursor_reads_the_old_epoch_batch_format():
    assert resume_cursor({"cursor": {"epoch": 3, "batch": 7}}, 1, 4) == Cursor(1, 4, 3, 7)


def test_resume_with_another_world_size_warns():
    state = {"cursor": Cursor(0, 2, epoch=1, next_batch=4).to_dict()}
    with pytest.warns(UserWarning, match="world_size 3, checkpoint had 2"):
        assert resume_cursor(state, 2, 3) == Cursor(2, 3, epoch=1, next_batch=4)


def test_rng_state_round_trips_every_generator():
    state = rng_state()
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], again[0])
    np.testing.assert_array_equal(drawn[1], again[1])
    assert drawn[2] == again[2]


def read_losses(folder: Path) -> list[float]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_old_format_checkpoint_resumes_exactly(tmp_path):
    # A run checkpointed by the old trainer ({"epoch", "batch"} cursor) continues from its
    # cursor: the losses equal those of an uninterrupted run.
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=4, seq_len=32)
    config = TrainConfig(
        source=str(source), steps=6, lr=2e-3, warmup_steps=2, num_classes=4, progress=False
    )
    straight = train(config.replace(ckpt_dir=str(tmp_path / "straight")))
    resumed = config.replace(ckpt_dir=str(tmp_path / "resumed"))
    first = train(resumed.replace(stop_at=5))  # 5 steps: into epoch 1 of the 4-batch folder
    path = tmp_path / "resumed" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert state["cursor"] == {"rank": 0, "world_size": 1, "epoch": 1, "next_batch": 1}
    state["cursor"] = {"epoch": 1, "batch": 1}
    save_checkpoint(path, state)
    second = train(resumed.replace(resume=True))
    assert [r["loss"] for r in first + second] == [r["loss"] for r in straight]
    assert [(r["epoch"], r["next_batch"]) for r in second] == [(1, 2)]
    assert read_losses(tmp_path / "resumed") == read_losses(tmp_path / "straight")


def test_trained_model_loads_with_its_weights_config_and_step(tmp_path):
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=2, seq_len=32)
    config = TrainConfig(
        source=str(source), steps=3, num_classes=4, progress=False, ckpt_dir=str(tmp_path / "r")
    )
    train(config)
    model, step, _ = load_trained_model(tmp_path / "r" / "checkpoint.pt")
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert step == 3 and not model.training
    assert model.config.num_classes == 4 and model.config.patch_size == 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name])


def test_loading_a_model_from_a_missing_or_foreign_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_trained_model(tmp_path / "nothing.pt")
    save_checkpoint(tmp_path / "other.pt", {"step": 1})
    with pytest.raises(ValueError, match="not a navit checkpoint"):
        load_trained_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt: not a navit checkpoint"):
        load_trained_model(tmp_path / "junk.pt")
