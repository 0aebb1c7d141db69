"""`navit pretrain`: the whole local job in one command, and nothing left behind.

The end-to-end tests run the real command (`python -m deploy.cli pretrain ...`) on a
40-image data set with a small config, two trainer ranks (DDP over gloo) and a one-CPU
local Ray, and find the processes it started by the run's marker variable, which every
descendant inherits (Ray's daemons and workers included).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from deploy.pretrain.supervisor import READY_FILE, RUN_ENV
from tests.processes import assert_cursor_continues, cmdline, processes_with_env, wait_for

REPO = Path(__file__).resolve().parents[3]
SMALL = ["--set=seq_len=256", "--set=max_res=128", "--set=batch_size=2"]


# ---------------------------------------------------------------------------------------
# The real command


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from packer.sample_data import write_sample_dataset

    folder = tmp_path_factory.mktemp("pretrain-data") / "images"
    write_sample_dataset(folder, 40, seed=5)
    return folder


def run_processes(run_id: str) -> list[int]:
    """Live processes carrying this run's marker (zombies have no environment left)."""
    return processes_with_env(RUN_ENV, run_id)


class Run:
    """`navit pretrain` as a child process, with its run directory's files."""

    def __init__(self, dataset: Path, run_dir: Path, *args: str) -> None:
        self.run_dir = run_dir
        self.output = run_dir.parent / f"{run_dir.name}.out"
        argv = [sys.executable, "-m", "deploy.cli", "pretrain", str(dataset)]
        argv += ["--run-dir", str(run_dir), "--api-port=0", "--flight-port=0", "--num-cpus=1"]
        argv += ["--no-progress", *SMALL, *args]  # a test's flags last: they win
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def events(self, kind: str | None = None) -> list[dict]:
        path = self.run_dir / "events.jsonl"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [e for e in events if kind is None or e["event"] == kind]

    @property
    def run_id(self) -> str:
        return self.events("run")[0]["run_id"]

    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 180) -> None:
        wait_for(condition, what, self.process, "pretrain", self.text, timeout)

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pretrain did not end within {timeout} s:\n{self.text()}")

    def cleanup(self) -> None:
        """After a failed test: leave nothing running either."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.events("run"):
            for pid in run_processes(self.run_id):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.cleanup()


def assert_nothing_left(run: Run, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := run_processes(run.run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [cmdline(pid) for pid in left]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pretrain_trains_survives_faults_retunes_live_and_cleans_up(
    dataset: Path, tmp_path: Path, runs: list[Run]
) -> None:
    steps = 30
    run = Run(dataset, tmp_path / "run", "--trainers=2", f"--steps={steps}", "--ckpt-every=5")
    runs.append(run)
    run.wait_for(lambda: run.events("trainers_started"), "trainers started")
    api = run.events("service_ready")[0]["api"]
    assert f"control plane: {api}" in run.text()
    # The service said it was ready through its ready file, naming itself.
    ready = json.loads((run.run_dir / READY_FILE).read_text())
    assert ready["pid"] == run.events("service_started")[0]["pid"]
    assert ready["api"] == api
    # Live retuning while it trains: the change applies from the next unplanned window.
    run.wait_for(lambda: run.metrics(), "training")
    response = httpx.patch(f"{api}/config", json={"pack_window": 16}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2

    # Faults, once the first checkpoint exists: a Ray worker process dies (Ray retries its
    # task, the stream goes on), then trainer rank 1 (the supervisor restarts both ranks
    # from the checkpoint with --resume).
    run.wait_for(lambda: (run.run_dir / "checkpoint.pt").exists(), "checkpointed")
    ray_workers = [
        p for p in run_processes(run.run_id) if cmdline(p).startswith(("ray::fill", "ray::IDLE"))
    ]
    assert ray_workers, [cmdline(p) for p in run_processes(run.run_id)]
    os.kill(ray_workers[0], signal.SIGKILL)
    rank1 = run.events("trainers_started")[0]["pids"][1]
    os.kill(rank1, signal.SIGKILL)

    assert run.wait() == 0, run.text()
    (restart,) = run.events("restart")
    assert restart["resume"] and restart["checkpoint_step"] >= 5
    metrics = [m for m in run.metrics() if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert_cursor_continues(metrics)  # the resumed ranks went on from the cursor
    assert {m["config_version"] for m in metrics} == {1, 2}

    import torch

    checkpoint = torch.load(run.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == steps
    stats = json.loads((run.run_dir / "stats.json").read_text())
    # The default validation split: held out of the stream, scored by the trainers.
    held_out = stats["holdout"]["held_out_images"]
    assert stats["holdout"]["fraction"] == 0.1 and held_out > 0
    assert stats["config_version"] == 2 and stats["images"] == 40 - held_out
    evals = [m for m in run.metrics() if m.get("eval")]
    assert evals and evals[-1]["step"] == steps and evals[-1]["eval_images"] == held_out
    assert f"validation ({held_out} held-out images)" in run.text()
    assert stats["rejected_by_reason"] == {}
    assert 0.5 < stats["delivered_efficiency"] <= stats["packing_efficiency"] <= 1.0
    assert {r["rank"] for r in stats["ranks"] if r["world_size"] == 2} == {0, 1}
    assert (run.run_dir / "pretrain.png").read_bytes()[:4] == b"\x89PNG"
    assert "finished after" in run.text() and "packing efficiency" in run.text()
    assert not (run.run_dir / READY_FILE).exists()  # the stopped service removed it
    assert_nothing_left(run)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_service_that_dies_before_ready_fails_the_run_with_its_log(
    dataset: Path, tmp_path: Path, runs: list[Run]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = Run(dataset, tmp_path / "run", "--steps=5", f"--api-port={port}")
        runs.append(run)
        code = run.wait(120)
    assert code == 1, run.text()
    text = run.text()
    assert "the service exited (2):" in text
    assert "address already in use" in text.lower()  # the tail of the service's log
    assert "a port is taken" in text
    assert not run.events("service_ready") and not run.events("trainers_started")
    assert not (run.run_dir / READY_FILE).exists()
    assert_nothing_left(run)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("flags", "resolution"), [((), 128), (("--eval-resolution=64",), 64)], ids=["max_res", "given"]
)
def test_an_image_folder_as_eval_source_is_packed_once_and_scored(
    dataset: Path, tmp_path: Path, runs: list[Run], flags: tuple[str, ...], resolution: int
) -> None:
    from packer.sample_data import write_sample_dataset

    write_sample_dataset(tmp_path / "eval-images", 6, seed=11)
    source = f"--eval-source={tmp_path / 'eval-images'}"
    run = Run(dataset, tmp_path / "run", "--steps=3", "--val-fraction=0", source, *flags)
    runs.append(run)
    assert run.wait(150) == 0, run.text()
    evals = [m for m in run.metrics() if m.get("eval")]
    assert evals and evals[-1]["eval_images"] == 6
    assert f"6 images packed at {resolution} px" in run.text()
    assert not run.events("restart")
    assert_nothing_left(run)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_trainer_that_refuses_its_flags_stops_the_job_at_once_without_restarts(
    dataset: Path, tmp_path: Path, runs: list[Run]
) -> None:
    # The sample data names 4 classes: --num-classes 7 is a usage error of every rank.
    run = Run(dataset, tmp_path / "run", "--steps=5", "--num-classes=7", "--trainers=2")
    runs.append(run)
    assert run.wait(150) == 2, run.text()
    text = run.text()
    assert "refused to start: navit train: error: --num-classes 7 disagrees" in text
    assert not run.events("restart") and len(run.events("trainers_started")) == 1
    assert_nothing_left(run)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_signal_stops_every_process_it_started(
    dataset: Path, tmp_path: Path, runs: list[Run], signum: signal.Signals
) -> None:
    run = Run(dataset, tmp_path / "run", "--trainers=2", "--steps=100000")
    runs.append(run)
    run.wait_for(lambda: run.metrics(), "training")
    started = run_processes(run.run_id)
    assert any("deploy.cli serve" in cmdline(p) for p in started)
    assert sum("deploy.cli train" in cmdline(p) for p in started) == 2
    assert any("raylet" in cmdline(p) for p in started)  # Ray's daemons carry the marker too

    os.kill(run.process.pid, signum)  # what Ctrl-C, `kill` or `kill -9` send
    code = run.wait(120)
    if signum == signal.SIGKILL:
        # No handler runs: each child got SIGTERM from the kernel (PR_SET_PDEATHSIG)
        # and the service then stopped its own Ray.
        assert code == -signal.SIGKILL
    else:
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
        assert run.events("end")[0]["state"] == "interrupted"
        stats = json.loads((run.run_dir / "stats.json").read_text())
        assert stats["images"] + stats["holdout"]["held_out_images"] == 40
        assert (run.run_dir / "pretrain.png").exists()
    assert_nothing_left(run)
