"""`python -m service.serve` as a process: it prints where it serves, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _serve(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "service.serve", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_missing_dataset_is_a_clear_error(tmp_path):
    process = _serve(str(tmp_path / "nothing-here"), "--api-port", "0", "--flight-port", "0")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "does not exist" in stderr


def test_a_bad_override_names_the_field(tmp_path):
    process = _serve(str(tmp_path), "--set", "seq_len=abc")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "seq_len" in stderr


@pytest.mark.slow
def test_serve_runs_and_stops_on_sigterm(sample_dataset, index_cache_dir, tmp_path):
    process = _serve(
        str(sample_dataset),
        "--api-port", "0",
        "--flight-port", "0",
        "--num-cpus", "1",
        "--state-dir", str(tmp_path / "state"),
        "--index-cache-dir", str(index_cache_dir),
        "--set", "seq_len=128",
        "--set", "max_res=96",
        "--set", "min_res=32",
        "--log-level", "warning",
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        serving = json.loads(line)["serving"]
        assert serving["flight"].startswith("grpc+tcp://127.0.0.1:")
        ready = httpx.get(f"{serving['api']}/readyz", timeout=30)
        assert ready.status_code == 200
        assert httpx.get(f"{serving['api']}/config").json()["config"]["seq_len"] == 128
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "state" / "navit-state.sqlite3").exists()
