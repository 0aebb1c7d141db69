"""The training loop: loss falls, resume is exact, empty batches keep DDP in lockstep."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.trainer_synthetic import (
    ListFlightServer,
    learnable_batches,
    write_learnable_folder,
)
from trainer.train import add_train_arguments, run_train, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    # 6 batches of 4 sequences x 64 tokens, colour-coded classes (4 of them).
    return write_learnable_folder(tmp_path_factory.mktemp("packed"), epochs=1, batches=6)


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls(learnable, tmp_path):
    records = train(
        learnable,
        steps=30,
        ckpt_dir=tmp_path,
        lr=3e-3,
        warmup_steps=5,
        num_classes=4,
        progress=False,
    )
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end < 0.5 * start, (start, end)
    line = read_metrics(tmp_path)[0]
    for key in ("step", "loss", "accuracy", "lr", "images_per_s", "tokens_per_s"):
        assert key in line
    for key in ("pad_fraction", "data_wait_s", "step_s"):
        assert key in line


def test_resume_reproduces_losses(learnable, tmp_path):
    settings = dict(steps=10, lr=2e-3, warmup_steps=3, num_classes=4, progress=False)
    # 10 steps cross the 6-batch epoch, so the cursor moves into epoch 1 after the resume.
    straight = train(learnable, ckpt_dir=tmp_path / "straight", **settings)
    first = train(learnable, ckpt_dir=tmp_path / "resumed", stop_at=5, **settings)
    # A crash after step 5's checkpoint left a line for step 6; the resumed run redoes it.
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": 6, "loss": -1.0}) + "\n")
    second = train(learnable, ckpt_dir=tmp_path / "resumed", resume=True, **settings)
    assert [r["step"] for r in first + second] == list(range(1, 11))
    assert [r["loss"] for r in first + second] == [r["loss"] for r in straight]
    assert [r["lr"] for r in first + second] == [r["lr"] for r in straight]
    lines = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in lines] == list(range(1, 11)) and lines[5]["loss"] != -1.0


def test_eval_lines_every_n_steps_and_at_the_end(learnable, tmp_path):
    records = train(
        learnable,
        steps=5,
        ckpt_dir=tmp_path,
        eval_source=learnable,
        eval_every=2,
        num_classes=4,
        progress=False,
    )
    evals = [r for r in records if r.get("eval")]
    assert [r["step"] for r in evals] == [2, 4, 5]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 and r["eval_images"] > 0 for r in evals)
    assert [r for r in read_metrics(tmp_path) if r.get("eval")] == evals


def test_num_classes_comes_from_classes_json(tmp_path):
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=1, seq_len=32)
    (source / "classes.json").write_text(json.dumps(["red", "green", "blue", "yellow", "x"]))
    train(source, steps=1, ckpt_dir=tmp_path / "ckpt", progress=False)
    checkpoint = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_config"]["num_classes"] == 5
    assert checkpoint["cursor"] == {"epoch": 0, "batch": 1} and checkpoint["step"] == 1


def test_labels_beyond_num_classes_are_an_error(learnable, tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        train(learnable, steps=2, num_classes=2, progress=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_stay_in_lockstep_through_padding_batches(tmp_path):
    # 3 global batches over 2 ranks: rank 1's second batch of each epoch is all padding,
    # yet it must run forward/backward so the gradient all-reduce of rank 0 completes.
    source = write_learnable_folder(tmp_path / "packed", epochs=1, batches=3, seq_len=32)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env["PYTHONPATH"] = str(REPO)
    common = [sys.executable, "-m", "trainer.train", "--source", str(source), "--steps", "3"]
    common += ["--world-size", "2", "--num-classes", "4", "--no-progress", "--device", "cpu"]
    ranks = [
        subprocess.Popen(
            [*common, "--rank", str(rank), "--ckpt", str(tmp_path / f"rank{rank}")],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=120)[0].decode() for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], outputs
    assert [r["step"] for r in read_metrics(tmp_path / "rank0")] == [1, 2, 3]
    assert not (tmp_path / "rank1" / "checkpoint.pt").exists()  # rank 0 writes files


def test_run_train_from_flight_with_token_from_env(tmp_path, monkeypatch):
    server = ListFlightServer([learnable_batches(3, seq_len=32)], token="t0k")
    try:
        monkeypatch.setenv("NAVIT_TOKEN", "t0k")
        parser = argparse.ArgumentParser()
        add_train_arguments(parser)
        argv = ["--source", f"grpc://127.0.0.1:{server.port}", "--steps", "4"]
        argv += ["--ckpt", str(tmp_path), "--num-classes", "4", "--no-progress"]
        with pytest.warns(UserWarning, match="ended after step 3"):
            assert run_train(parser.parse_args(argv)) == 0
    finally:
        server.shutdown()
    lines = read_metrics(tmp_path)
    # The server has only epoch 0: after its 3 batches the client asks for epoch 1, gets
    # an empty stream, and the run ends early at step 3 (with a warning and a checkpoint).
    assert [(r["epoch"], r["next_batch"]) for r in lines] == [(0, 1), (0, 2), (0, 3)]
    assert all(r["config_version"] == 7 for r in lines)
    assert server.tickets[0] == {"rank": 0, "world_size": 1, "epoch": 0, "start_batch": 0}
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 3


def test_parser_has_the_documented_flags():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--source", "grpc://h:1", "--steps", "5", "--resume"])
    assert args.model == "tiny" and args.resume and args.world_size is None


def test_trainer_imports_no_ray_service_or_other_packer_modules():
    code = (
        "import sys, trainer.train, trainer.data, trainer.model\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'service')"
        " or (m.startswith('packer.') and m != 'packer.contract.schema'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
