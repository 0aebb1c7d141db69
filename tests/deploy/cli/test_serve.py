"""`navit serve` as a process: it prints where it serves, writes its ready file once both
servers accept connections, stops on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from deploy.ready_file import ReadyFile

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from packer.sample_data import write_sample_dataset

    folder = tmp_path_factory.mktemp("serve-data") / "images"
    write_sample_dataset(folder, 48, seed=3)
    return folder


@pytest.fixture(scope="module")
def index_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-index-cache")


def _serve(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "serve", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _serve_sample(dataset: Path, index_cache_dir: Path, *extra: str) -> subprocess.Popen:
    """`navit serve` on the small sample set: any free ports, one CPU, small sequences."""
    return _serve(
        str(dataset),
        "--api-port", "0",
        "--flight-port", "0",
        "--num-cpus", "1",
        "--index-cache-dir", str(index_cache_dir),
        "--set", "seq_len=128",
        "--set", "max_res=96",
        *extra,
    )  # fmt: skip


@contextlib.contextmanager
def _stopped_by_sigterm(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Run the body, then SIGTERM the service and expect a clean exit; kill it on failure."""
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


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
    process = _serve_sample(
        sample_dataset, index_cache_dir,
        "--state-dir", str(tmp_path / "state"),
        "--set", "min_res=32",
        "--log-level", "warning",
    )  # fmt: skip
    with _stopped_by_sigterm(process):
        line = process.stdout.readline()
        assert line, process.stderr.read()
        serving = json.loads(line)["serving"]
        assert serving["flight"].startswith("grpc+tcp://127.0.0.1:")
        assert serving["classes"] == ["checkers", "circles", "squares", "stripes"]
        assert set(serving["images_per_class"]) == set(serving["classes"])
        ready = httpx.get(f"{serving['api']}/readyz", timeout=30)
        assert ready.status_code == 200
        assert httpx.get(f"{serving['api']}/config").json()["config"]["seq_len"] == 128
    assert (tmp_path / "state" / "navit-state.sqlite3").exists()


def _accepts(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_the_ready_file_appears_once_both_servers_accept_connections(
    sample_dataset, index_cache_dir, tmp_path
):
    ready_path = tmp_path / "ready" / "service.json"
    process = _serve_sample(
        sample_dataset, index_cache_dir, "--ready-file", str(ready_path), "--log-level", "warning"
    )
    with _stopped_by_sigterm(process):
        # The deadline only turns a hang into a failure.
        deadline = time.monotonic() + 180
        while (ready := ReadyFile.read(ready_path)) is None:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.02)
        # At the moment the file appears, both servers already take connections.
        assert _accepts(ready.api) and _accepts(ready.flight)
        assert ready.pid == process.pid
        assert ready.flight.startswith("grpc+tcp://127.0.0.1:")
        assert httpx.get(f"{ready.api}/readyz", timeout=30).status_code == 200
        serving = json.loads(process.stdout.readline())["serving"]
        assert (serving["api"], serving["flight"]) == (ready.api, ready.flight)
    assert not ready_path.exists()  # a stopped service is no longer ready


def test_a_service_that_fails_to_start_writes_no_ready_file(tmp_path):
    ready_path = tmp_path / "ready.json"
    process = _serve(
        str(tmp_path / "nothing-here"), "--api-port", "0", "--flight-port", "0",
        "--ready-file", str(ready_path),
    )  # fmt: skip
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert not ready_path.exists()


@pytest.mark.slow
def test_serve_hides_rays_and_uvicorns_start_up_lines_unless_verbose(
    sample_dataset, index_cache_dir, tmp_path
):
    process = _serve_sample(sample_dataset, index_cache_dir)
    with _stopped_by_sigterm(process):
        line = process.stdout.readline()
        assert line, process.stderr.read()
    stderr = process.stderr.read()
    assert "Ray" not in stderr and "ray" not in stderr.lower().replace("array", "")
    assert "Started server process" not in stderr and "Uvicorn" not in stderr


@pytest.mark.slow
def test_a_streamer_that_cannot_start_fails_serve_with_one_line(
    sample_dataset, index_cache_dir, tmp_path
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ready_path = tmp_path / "ready.json"
        process = _serve_sample(
            sample_dataset, index_cache_dir,
            "--streamers", "1", "--streamer-port", str(port), "--ready-file", str(ready_path),
        )  # fmt: skip
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("navit:")]
    assert ours == [
        f"navit: cannot start the service: streamer 0 cannot start on 127.0.0.1: OSError: the "
        f"Flight server cannot listen on 127.0.0.1:{port} (Unknown error: Server did not start "
        "properly): the port is taken, the address is not this machine's, or the TLS pair is "
        "unusable"
    ], stderr
    assert not ready_path.exists()


def test_holdout_flags_reach_the_service_settings():
    import argparse

    from deploy.cli.serve import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["data", "--holdout-fraction", "0.1", "--holdout-seed", "5"])
    settings = settings_from_args(args)
    assert (settings.holdout_fraction, settings.holdout_seed) == (0.1, 5)
    plain = settings_from_args(parser.parse_args(["data"]))
    assert (plain.holdout_fraction, plain.holdout_seed) == (0.0, 0)
