"""`navit train`: the flags of TrainConfig, the token, bad input, DDP ranks as processes."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deploy.cli.train import add_arguments, run
from tests.trainer.trainer_synthetic import (
    ListFlightServer,
    learnable_batches,
    write_learnable_folder,
)

REPO = Path(__file__).resolve().parents[3]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


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
    common = [sys.executable, "-m", "deploy.cli.train", "--source", str(source), "--steps", "3"]
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


def test_run_trains_from_flight_with_token_from_env(tmp_path, monkeypatch):
    server = ListFlightServer([learnable_batches(3, seq_len=32)], token="t0k")
    try:
        monkeypatch.setenv("NAVIT_TOKEN", "t0k")
        argv = ["--source", f"grpc://127.0.0.1:{server.port}", "--steps", "4"]
        argv += ["--ckpt", str(tmp_path), "--num-classes", "4", "--no-progress"]
        with pytest.warns(UserWarning, match="ended after step 3"):
            assert run(parse(argv)) == 0
    finally:
        server.shutdown()
    lines = read_metrics(tmp_path)
    # The server has only epoch 0: after its 3 batches the client asks for epoch 1, gets
    # an empty stream, and the run ends early at step 3 (with a warning and a checkpoint).
    assert [(r["epoch"], r["next_batch"]) for r in lines] == [(0, 1), (0, 2), (0, 3)]
    assert all(r["config_version"] == 7 for r in lines)
    assert server.tickets[0] == {"rank": 0, "world_size": 1, "epoch": 0, "start_batch": 0}
    assert server.tickets[1] == {"rank": 0, "world_size": 1, "epoch": 1, "start_batch": 0}
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 3


def test_flags_keep_the_names_and_defaults_of_navit_train():
    args = parse(["--source", "grpc://h:1", "--steps", "5"])
    assert vars(args) == {
        "source": "grpc://h:1",
        "steps": 5,
        "model": "tiny",
        "ckpt_dir": "runs/train",
        "ckpt_every": 1000,
        "stop_at": None,
        "rank": None,
        "world_size": None,
        "resume": False,
        "lr": 1e-3,
        "warmup_steps": 100,
        "weight_decay": 0.05,
        "grad_clip": 1.0,
        "compile": False,
        "num_classes": None,
        "token_file": None,
        "eval_source": None,
        "eval_resolution": None,
        "eval_every": 0,
        "seed": 0,
        "log_every": 1,
        "progress": True,
        "device": None,
        "prefetch": 2,
        "pos_mode": "fractional",
        "attn_impl": "auto",
    }
    switched = parse(
        ["--source=d", "--steps=5", "--resume", "--compile", "--no-progress", "--ckpt", "c"]
    )
    assert switched.resume and switched.compile and not switched.progress
    assert switched.ckpt_dir == "c"


@pytest.mark.parametrize("missing", ["--source", "--steps"])
def test_source_and_steps_are_required(missing, capsys):
    argv = {"--source": ["--source", "d"], "--steps": ["--steps", "5"]}
    given = [word for flag, words in argv.items() if flag != missing for word in words]
    with pytest.raises(SystemExit):
        parse(given)
    assert missing in capsys.readouterr().err


def test_bad_value_is_an_error_naming_the_field(capsys):
    assert run(parse(["--source", "d", "--steps", "0"])) == 2
    assert "steps" in capsys.readouterr().err


def test_missing_token_file_is_an_error_not_an_open_run(tmp_path, capsys):
    argv = ["--source", "grpc://127.0.0.1:1", "--steps", "1"]
    argv += ["--token-file", str(tmp_path / "absent"), "--ckpt", str(tmp_path)]
    assert run(parse(argv)) == 2
    assert "absent" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_module_runs_on_its_own_and_imports_no_ray_service_or_packer_core():
    help_text = subprocess.run(
        [sys.executable, "-m", "deploy.cli.train", "--help"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "--source" in help_text and "--warmup-steps" in help_text
    code = (
        "import sys, deploy.cli.train\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'service', 'pydantic')"
        " or (m.startswith('packer.') and not m.startswith('packer.contract'))"
        " or (m.startswith('deploy.') and m not in"
        " ('deploy.cli', 'deploy.cli.train', 'deploy.cli.options')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.fixture(scope="module")
def sample_service(tmp_path_factory):
    """The packer service's job and Flight server on 24 sample images (4 classes), filled
    in this process (no Ray)."""
    from packer.index.cache import load_index
    from packer.sample_data import write_sample_dataset
    from service.flight import PackedFlightServer
    from service.job import ServiceJob
    from service.state import StateStore
    from tests.service.service_testkit import SMALL_CONFIG, InProcessFill

    data = tmp_path_factory.mktemp("stream-data") / "images"
    write_sample_dataset(data, 24, seed=2)
    job = ServiceJob(load_index(str(data)), SMALL_CONFIG, StateStore(None), fill=InProcessFill())
    server = PackedFlightServer(job, "127.0.0.1", 0)
    yield SimpleNamespace(location=f"grpc://127.0.0.1:{server.port}", job=job)
    server.shutdown()


def test_the_head_is_sized_from_the_class_names_the_stream_carries(sample_service, tmp_path):
    argv = [
        "--source",
        sample_service.location,
        "--steps",
        "2",
        "--ckpt",
        str(tmp_path),
        "--no-progress",
    ]
    assert run(parse(argv)) == 0
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["class_names"] == ["checkers", "circles", "squares", "stripes"]
    assert checkpoint["model_config"]["num_classes"] == 4


def test_a_num_classes_the_stream_contradicts_is_one_line_and_exit_2(
    sample_service, tmp_path, capsys
):
    argv = ["--source", sample_service.location, "--steps", "2", "--ckpt", str(tmp_path)]
    assert run(parse([*argv, "--num-classes", "1000", "--no-progress"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--num-classes 1000 disagrees with the 4 classes" in err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_an_image_folder_as_eval_source_is_packed_when_training_starts(sample_service, tmp_path):
    from packer.sample_data import write_sample_dataset

    write_sample_dataset(tmp_path / "val", 8, seed=9)
    argv = ["--source", sample_service.location, "--steps", "2", "--ckpt", str(tmp_path / "run")]
    argv += ["--eval-source", str(tmp_path / "val"), "--eval-resolution", "64", "--no-progress"]
    assert run(parse(argv)) == 0
    (last,) = [r for r in read_metrics(tmp_path / "run") if r.get("eval")]
    assert last["eval_images"] == 8
    assert (tmp_path / "run" / "eval" / "rank-0" / "classes.json").exists()


def test_an_eval_source_that_cannot_be_read_stops_before_the_first_step(
    sample_service, tmp_path, capsys
):
    argv = ["--source", sample_service.location, "--steps", "2", "--ckpt", str(tmp_path)]
    argv += ["--eval-source", str(tmp_path / "nowhere"), "--no-progress"]
    assert run(parse(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--eval-source" in err and "nowhere" in err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_rank_training_from_the_service_shows_in_its_trainers_table(sample_service, tmp_path):
    argv = ["--source", sample_service.location, "--steps", "3", "--rank", "0"]
    argv += ["--world-size", "1", "--ckpt", str(tmp_path), "--no-progress"]
    assert run(parse(argv)) == 0
    (shown,) = [t for t in sample_service.job.trainers() if t["rank"] == 0]
    assert shown["step"] >= 1 and 0.0 <= shown["data_wait_fraction"] <= 1.0
    assert shown["world_size"] == 1 and shown["step_time_s"] > 0
