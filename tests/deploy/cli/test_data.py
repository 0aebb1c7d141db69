"""`navit sample-data` and `navit simulate` as commands; `navit pack` runs in
tests/packer/test_pipeline.py (it starts Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def navit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sample_data_then_simulate_predicts_from_the_headers(tmp_path: Path) -> None:
    written = navit("sample-data", str(tmp_path / "images"), "--images", "12", "--seed", "1")
    assert written.returncode == 0, written.stderr
    images = sorted((tmp_path / "images").rglob("*.jpg"))
    assert len(images) == json.loads(written.stdout)["images"] == 12
    simulated = navit(
        "simulate",
        str(tmp_path / "images"),
        "--set",
        "seq_len=256",
        "--set",
        "max_res=128",
        "--json",
    )
    assert simulated.returncode == 0, simulated.stderr
    stats = json.loads(simulated.stdout)
    assert stats["images_in"] == 12
    assert stats["images_packed"] + stats["images_rejected"] == 12


def test_a_bad_override_exits_2_with_one_line_naming_the_field(tmp_path: Path) -> None:
    done = navit("simulate", str(tmp_path), "--set", "seq_len=abc")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("navit: invalid config: seq_len")
