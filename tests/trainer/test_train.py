"""The training loop: loss falls, resume is exact, eval lines, classes, label checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.trainer_synthetic import write_learnable_folder
from trainer.config import ConfigMismatch, TrainConfig
from trainer.train import lr_factor, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    # 6 batches of 4 sequences x 64 tokens, colour-coded classes (4 of them).
    return write_learnable_folder(tmp_path_factory.mktemp("packed"), epochs=1, batches=6)


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls(learnable, tmp_path):
    config = TrainConfig(
        source=str(learnable),
        steps=30,
        ckpt_dir=str(tmp_path),
        lr=3e-3,
        warmup_steps=5,
        num_classes=4,
        progress=False,
    )
    records = train(config)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end < 0.5 * start, (start, end)
    line = read_metrics(tmp_path)[0]
    for key in ("step", "loss", "accuracy", "lr", "images_per_s", "tokens_per_s"):
        assert key in line
    for key in ("pad_fraction", "data_wait_s", "step_s"):
        assert key in line


def test_progress_off_a_terminal_is_plain_lines_not_a_redrawn_bar(learnable, tmp_path, capfd):
    # Under capfd stderr is a file, as when `navit train ... 2> log` or `| tee` runs.
    config = TrainConfig(source=str(learnable), steps=4, ckpt_dir=str(tmp_path), num_classes=4)
    train(config)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("train: step 4/4 | loss ")


def test_resume_reproduces_losses(learnable, tmp_path):
    config = TrainConfig(
        source=str(learnable), steps=10, lr=2e-3, warmup_steps=3, num_classes=4, progress=False
    )
    # 10 steps cross the 6-batch epoch, so the cursor moves into epoch 1 after the resume.
    straight = train(config.replace(ckpt_dir=str(tmp_path / "straight")))
    resumed = config.replace(ckpt_dir=str(tmp_path / "resumed"))
    first = train(resumed.replace(stop_at=5))
    # A crash after step 5's checkpoint left a line for step 6; the resumed run redoes it.
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": 6, "loss": -1.0}) + "\n")
    second = train(resumed.replace(resume=True))
    assert [r["step"] for r in first + second] == list(range(1, 11))
    assert [r["loss"] for r in first + second] == [r["loss"] for r in straight]
    assert [r["lr"] for r in first + second] == [r["lr"] for r in straight]
    lines = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in lines] == list(range(1, 11)) and lines[5]["loss"] != -1.0


def test_eval_lines_every_n_steps_and_at_the_end(learnable, tmp_path):
    config = TrainConfig(
        source=str(learnable),
        steps=5,
        ckpt_dir=str(tmp_path),
        eval_source=str(learnable),
        eval_every=2,
        num_classes=4,
        progress=False,
    )
    records = train(config)
    evals = [r for r in records if r.get("eval")]
    assert [r["step"] for r in evals] == [2, 4, 5]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 and r["eval_images"] > 0 for r in evals)
    assert [r for r in read_metrics(tmp_path) if r.get("eval")] == evals


def test_the_final_eval_maps_the_eval_sources_labels_by_class_name(tmp_path):
    import shutil

    from trainer.checkpoint import load_trained_model
    from trainer.evaluate import evaluate

    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=2, seq_len=32)
    (source / "classes.json").write_text(json.dumps(["a", "b", "c", "d"]))
    # The same batches, whose label k means the k-th of another order of the names.
    shutil.copytree(source, tmp_path / "eval")
    (tmp_path / "eval" / "classes.json").write_text(json.dumps(["d", "c", "b", "a"]))
    config = TrainConfig(
        source=str(source),
        steps=2,
        ckpt_dir=str(tmp_path / "ckpt"),
        eval_source=str(tmp_path / "eval"),
        progress=False,
    )
    (final,) = [r for r in train(config) if r.get("eval")]
    trained = load_trained_model(tmp_path / "ckpt" / "checkpoint.pt")
    by_name = evaluate(trained.model, tmp_path / "eval", 2, class_names=trained.class_names)
    by_position = evaluate(trained.model, tmp_path / "eval", 2)
    assert final["eval_loss"] == by_name["eval_loss"] != by_position["eval_loss"]


def test_num_classes_comes_from_classes_json(tmp_path):
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=1, seq_len=32)
    (source / "classes.json").write_text(json.dumps(["red", "green", "blue", "yellow", "x"]))
    train(TrainConfig(source=str(source), steps=1, ckpt_dir=str(tmp_path / "ckpt"), progress=False))
    checkpoint = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_config"]["num_classes"] == 5
    assert checkpoint["class_names"] == ["red", "green", "blue", "yellow", "x"]
    cursor = {"rank": 0, "world_size": 1, "epoch": 0, "next_batch": 1}
    assert checkpoint["cursor"] == cursor and checkpoint["step"] == 1


def test_a_num_classes_the_data_contradicts_is_refused_not_resized(tmp_path):
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=1, seq_len=32)
    (source / "classes.json").write_text(json.dumps(["ants", "bees"]))
    config = TrainConfig(source=str(source), steps=1, ckpt_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigMismatch, match="--num-classes 1000 disagrees with the 2 classes"):
        train(config.replace(num_classes=1000))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resuming_on_data_of_other_classes_is_refused(tmp_path):
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=2, seq_len=32)
    (source / "classes.json").write_text(json.dumps(["a", "b", "c", "d"]))
    config = TrainConfig(source=str(source), steps=2, ckpt_dir=str(tmp_path), progress=False)
    train(config.replace(stop_at=1))
    (source / "classes.json").write_text(json.dumps(["d", "c", "b", "a"]))
    with pytest.raises(ConfigMismatch, match="not the checkpoint's"):
        train(config.replace(resume=True))


def test_labels_beyond_num_classes_are_an_error(learnable, tmp_path):
    config = TrainConfig(
        source=str(learnable), steps=2, num_classes=2, ckpt_dir=str(tmp_path), progress=False
    )
    with pytest.raises(ValueError, match="num_classes"):
        train(config)


def test_stop_at_ends_early_without_changing_the_schedule(learnable, tmp_path):
    config = TrainConfig(
        source=str(learnable), steps=8, warmup_steps=2, num_classes=4, progress=False
    )
    full = train(config.replace(ckpt_dir=str(tmp_path / "full")))
    cut = train(config.replace(ckpt_dir=str(tmp_path / "cut"), stop_at=3))
    assert [r["step"] for r in cut] == [1, 2, 3]
    assert [r["lr"] for r in cut] == [r["lr"] for r in full[:3]]
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero():
    assert lr_factor(49, 100, 1000) == 0.5
    assert lr_factor(99, 100, 1000) == 1.0
    assert lr_factor(550, 100, 1000) == pytest.approx(0.5)
    assert lr_factor(1000, 100, 1000) == pytest.approx(0.0)


def test_trainer_imports_only_the_contract_from_packer_and_no_ray_or_service():
    code = (
        "import sys, trainer.train, trainer.data, trainer.model, trainer.checkpoint\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'service', 'deploy')"
        " or (m.startswith('packer.') and not m.startswith('packer.contract')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
