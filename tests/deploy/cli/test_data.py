"""`navit sample-data`, `navit simulate` and `navit pack` as commands (the Ray pipeline
under `navit pack` is tested in tests/packer/test_pipeline.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

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
    assert stats["classes"] == ["checkers", "circles", "squares", "stripes"]
    assert sum(stats["images_per_class"].values()) == 12
    assert simulated.stderr == ""  # nothing to warn about
    plain = navit("simulate", str(tmp_path / "images"), "--set", "max_res=128")
    assert "  4 classes: checkers 3, circles 3, squares 3, stripes 3" in plain.stdout.splitlines()


def test_a_root_of_split_folders_is_warned_about_naming_the_folder_to_give(
    tmp_path: Path,
) -> None:
    from packer.sample_data import write_sample_dataset

    write_sample_dataset(tmp_path / "data" / "train", 8, seed=1)
    write_sample_dataset(tmp_path / "data" / "val", 4, seed=2)
    done = navit("simulate", str(tmp_path / "data"), "--set", "max_res=128", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["classes"] == ["train", "val"]
    (warning,) = done.stderr.strip().splitlines()
    assert warning.startswith("navit simulate: warning:") and "split" in warning
    assert str(tmp_path / "data" / "train") in warning


def test_a_bad_override_exits_2_with_one_line_naming_the_field(tmp_path: Path) -> None:
    done = navit("simulate", str(tmp_path), "--set", "seq_len=abc")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("navit: invalid config: seq_len")


# -- `navit pack` as a user runs it (each starts its own Ray) ------------------------------

PACK_SETTINGS = ("--set", "seq_len=256", "--set", "max_res=128", "--set", "batch_size=4")


def _noise(stderr: str) -> list[str]:
    """stderr less the pack's plain progress lines (off a terminal, one every 10 s)."""
    return [line for line in stderr.splitlines() if not line.startswith("pack: ")]


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sample images, the odd and broken ones of image_cases, and a stray text file."""
    from packer.sample_data import write_sample_dataset
    from tests.packer.image_cases import write_odd_images

    root = tmp_path_factory.mktemp("odd-data") / "images"
    write_sample_dataset(root, 16, seed=4)
    write_odd_images(root)
    (root / "notes.txt").write_text("a stray file\n")
    return root


@pytest.fixture(scope="module")
def packed_odd(
    odd_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("odd-packed") / "out"
    return out, navit("pack", str(odd_dataset), "--out", str(out), *PACK_SETTINGS)


@pytest.mark.slow
def test_pack_off_a_terminal_prints_plain_progress_and_a_summary_of_predicted_and_delivered(
    packed_odd: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = packed_odd
    assert done.returncode == 0, done.stderr
    # No redrawn line off a terminal, no Ray start-up lines, no Pillow warnings.
    assert "\r" not in done.stderr
    assert _noise(done.stderr) == []
    lines = done.stdout.splitlines()
    assert lines[0] == f"packed into {out} (1 epoch):"
    report = json.loads((out / "stats.json").read_text())
    predicted, delivered = report["predicted"], report["delivered"]
    # bad/truncated.jpg: its header reads, its pixels do not; only the pack finds it.
    assert predicted["images_packed"] == delivered["images_packed"] + 1
    assert delivered["rejected_by_reason"]["truncated"] == 1
    assert (
        f"  predicted: {predicted['images_packed']} packed at "
        f"{100 * predicted['packing_efficiency']:.2f}% packing efficiency; delivered: "
        f"{delivered['images_packed']} packed at {100 * delivered['packing_efficiency']:.2f}%"
    ) in lines
    assert "  skipped (not images): .txt 1" in lines
    assert delivered["skipped_by_extension"] == {".txt": 1}
    assert any("truncated 1" in line and "rejected.jsonl" in line for line in lines)


@pytest.mark.slow
def test_simulate_after_a_pack_lists_every_image_it_leaves_out_and_counts_skipped_files(
    packed_odd: tuple[Path, subprocess.CompletedProcess[str]], odd_dataset: Path
) -> None:
    from tests.packer.image_cases import ODD_CASES

    out, _ = packed_odd
    done = navit("simulate", str(odd_dataset), *PACK_SETTINGS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "  known decode failures: 1 (found by an earlier pack, left out)" in lines
    assert "  skipped (not images): .txt 1" in lines
    # The list: the header failures and the decode failure the pack found, with reasons.
    listed = lines[lines.index("rejected images (reason: detail):") + 1 :]
    bad = {name: reason for name, (_, reason) in ODD_CASES.items() if reason is not None}
    assert [line.split()[:2] for line in listed] == [
        [name, f"{reason}:"] for name, reason in sorted(bad.items())
    ]
    simulated = json.loads(navit("simulate", str(odd_dataset), *PACK_SETTINGS, "--json").stdout)
    delivered = json.loads((out / "stats.json").read_text())["delivered"]
    assert simulated["images_packed"] == delivered["images_packed"]  # now it predicts exactly


@pytest.mark.slow
def test_verbose_shows_rays_start_up_lines(odd_dataset: Path, tmp_path: Path) -> None:
    done = navit(
        "--verbose", "pack", str(odd_dataset), "--out", str(tmp_path / "out"), *PACK_SETTINGS
    )
    assert done.returncode == 0, done.stderr
    assert "Started a local Ray instance" in done.stderr


@pytest.mark.slow
def test_pack_of_the_odd_file_corpus_accounts_for_every_file_with_no_noise(
    tmp_path: Path,
) -> None:
    from packer.contract.schema import from_record_batch
    from packer.sources.image_folder import IMAGE_EXTENSIONS
    from tests.packer.format_cases import write_format_corpus

    expected = write_format_corpus(tmp_path / "corpus", IMAGE_EXTENSIONS)
    files = [p for p in (tmp_path / "corpus").rglob("*") if p.is_file()]
    assert len(files) == len(expected)
    out = tmp_path / "out"
    done = navit("pack", str(tmp_path / "corpus"), "--out", str(out), *PACK_SETTINGS)
    assert done.returncode == 0, done.stderr
    assert _noise(done.stderr) == []  # no traceback, no Pillow warning, no Ray line
    packed = {
        image_id
        for path in sorted(out.glob("epoch-*/batch-*.arrow"))
        for image_id in from_record_batch(pa.ipc.open_file(path).get_batch(0)).image_ids
    }
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").open()]
    assert all(row["reason"] and row["detail"] for row in rejected)
    skipped = json.loads((out / "stats.json").read_text())["delivered"]["skipped_by_extension"]
    assert packed.isdisjoint(row["image_id"] for row in rejected)
    assert len(packed) + len(rejected) + sum(skipped.values()) == len(files)
    assert packed == {name for name, e in expected.items() if e.outcome == "packed"}


@pytest.mark.slow
def test_stats_json_delivered_efficiency_is_the_real_share_of_the_written_tokens(
    packed_odd: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    import numpy as np

    from packer.contract.packed_folder import batch_files, epoch_folders, read_batch_file
    from packer.contract.schema import from_record_batch

    out, done = packed_odd
    assert done.returncode == 0, done.stderr
    delivered = json.loads((out / "stats.json").read_text())["delivered"]
    segments = [
        from_record_batch(read_batch_file(path)).segment_ids
        for folder in epoch_folders(out)
        for path in batch_files(folder)
    ]
    real = sum(int(np.count_nonzero(s)) for s in segments)
    assert delivered["delivered_efficiency"] == round(real / sum(s.size for s in segments), 6)
    assert any(line.startswith("  delivered efficiency: ") for line in done.stdout.splitlines())
