"""`navit eval`: flags, the three kinds of source, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cli import main
from packer.config import fixed_resolution_config
from packer.fill.in_process import pack_in_process, write_packed_folder
from tests.deploy.sample_model import PATCH, VAL_FRACTION, VAL_SEED, SampleModel
from tests.trainer.trainer_synthetic import ListFlightServer


def _eval(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _split_flags() -> list[str]:
    return ["--val-fraction", str(VAL_FRACTION), "--val-seed", str(VAL_SEED)]


def test_json_has_one_row_per_resolution_over_the_held_out_split(
    sample_model: SampleModel, capsys, tmp_path
):
    code, out, err = _eval(
        capsys,
        *("--ckpt", str(sample_model.checkpoint), "--source", str(sample_model.data)),
        *_split_flags(),
        *("--resolutions", "32,64,96", "--json", "--device", "cpu"),
        *("--plot", str(tmp_path / "eval.png")),
    )
    assert code == 0, err
    report = json.loads(out)
    assert [row["resolution"] for row in report["rows"]] == [32, 64, 96]
    assert all(row["images"] == sample_model.val.num_rows for row in report["rows"])
    assert report["step"] == 120 and report["device"] == "cpu"
    assert report["patch_size"] == PATCH and report["res_mode"] == "area"
    for row in report["rows"]:
        for key in ("accuracy", "loss", "tokens_per_image", "images_per_s", "tokens_per_s"):
            assert isinstance(row[key], float), key
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_table_prints_a_header_and_a_line_per_resolution(sample_model: SampleModel, capsys):
    code, out, _ = _eval(
        capsys,
        *("--ckpt", str(sample_model.checkpoint), "--source", str(sample_model.data)),
        *_split_flags(),
        *("--resolutions", "48,64", "--res-mode", "side"),
    )
    lines = out.splitlines()
    assert code == 0
    assert "held-out split" in lines[0] and "side mode" in lines[0]
    assert lines[1].split()[:2] == ["resolution", "images"]
    assert [line.split()[0] for line in lines[2:]] == ["48", "64"]


def test_a_packed_folder_and_a_flight_stream_score_as_one_row(
    sample_model: SampleModel, capsys, tmp_path
):
    config = fixed_resolution_config(64, PATCH)
    write_packed_folder(sample_model.val, config, tmp_path / "val")
    ckpt = ("--ckpt", str(sample_model.checkpoint))
    code, out, err = _eval(capsys, *ckpt, "--source", str(tmp_path / "val"), "--json")
    assert code == 0, err
    (folder_row,) = json.loads(out)["rows"]
    assert folder_row["resolution"] is None
    assert folder_row["images"] == sample_model.val.num_rows

    batches = [result.packed for result in pack_in_process(sample_model.val, config)]
    server = ListFlightServer([batches], token="secret")
    token_file = tmp_path / "token"
    token_file.write_text("secret\n")
    try:
        source = f"grpc://127.0.0.1:{server.port}"
        code, out, err = _eval(
            capsys, *ckpt, "--source", source, "--token-file", str(token_file), "--json"
        )
    finally:
        server.shutdown()
    assert code == 0, err
    (stream_row,) = json.loads(out)["rows"]
    for key in ("images", "tokens", "accuracy"):
        assert stream_row[key] == folder_row[key], key
    assert stream_row["loss"] == pytest.approx(folder_row["loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resolutions", "64,abc"], "--resolutions: not an integer"),
        (["--resolutions", ""], "--resolutions: an empty entry"),
        (["--resolutions", "8,64"], "resolution: must be an integer of at least patch_size=16"),
        (["--val-fraction", "1.5"], "--val-fraction: must lie in (0, 1)"),
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
    ],
)
def test_bad_flags_exit_2_with_one_line(sample_model: SampleModel, capsys, flags, message):
    code, out, err = _eval(
        capsys, "--ckpt", str(sample_model.checkpoint), "--source", str(sample_model.data), *flags
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_missing_checkpoint_or_data_set_exits_2_naming_it(
    sample_model: SampleModel, capsys, tmp_path
):
    code, _, err = _eval(capsys, "--ckpt", str(tmp_path / "none.pt"), "--source", "x")
    assert code == 2 and "none.pt" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = _eval(capsys, "--ckpt", str(tmp_path / "junk.pt"), "--source", "x")
    assert code == 2 and err.startswith("navit eval: error: --ckpt:")
    assert len(err.strip().splitlines()) == 1
    missing = str(tmp_path / "no-such-data")
    code, _, err = _eval(capsys, "--ckpt", str(sample_model.checkpoint), "--source", missing)
    assert code == 2 and "no-such-data" in err and len(err.strip().splitlines()) == 1


def test_a_split_of_a_packed_source_is_refused(sample_model: SampleModel, capsys, tmp_path: Path):
    write_packed_folder(sample_model.val, fixed_resolution_config(64, PATCH), tmp_path / "val")
    code, _, err = _eval(
        capsys,
        *("--ckpt", str(sample_model.checkpoint), "--source", str(tmp_path / "val")),
        *_split_flags(),
    )
    assert code == 2 and "--val-fraction splits a data set" in err


def _copy_class(sample_model: SampleModel, name: str, to: Path, as_name: str | None = None):
    import shutil

    shutil.copytree(sample_model.data / name, to / (as_name or name))


def test_a_folder_of_one_class_is_scored_by_class_name_not_by_position(
    sample_model: SampleModel, capsys, tmp_path
):
    import numpy as np

    from deploy.resolution_sweep import sweep_dataset
    from packer.index.cache import load_index
    from trainer.checkpoint import load_trained_model

    # circles is the model's class 1; alone in a folder its images are labelled 0.
    _copy_class(sample_model, "circles", tmp_path / "only")
    code, out, err = _eval(
        capsys,
        *("--ckpt", str(sample_model.checkpoint), "--source", str(tmp_path / "only")),
        *("--resolutions", "64", "--json", "--device", "cpu"),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["classes"] == ["checkers", "circles", "squares", "stripes"]
    (row,) = report["rows"]
    # The same images scored inside the whole data set, where their label is 1.
    model, _, _ = load_trained_model(sample_model.checkpoint)
    labels = sample_model.index.column("label").to_numpy()
    circles = sample_model.index.view(np.flatnonzero(labels == 1))
    (by_name,) = sweep_dataset(model, circles, [64])
    # Scored by position, the folder's label 0 would mean checkers: another loss, whatever
    # the model learned (its accuracy alone may tie on a weakly trained model).
    (by_position,) = sweep_dataset(model, load_index(str(tmp_path / "only")), [64])
    assert row["images"] == circles.num_rows
    assert (row["accuracy"], row["loss"]) == (by_name.result.accuracy, by_name.result.loss)
    assert row["loss"] != by_position.result.loss


def test_a_class_the_checkpoint_does_not_know_is_one_line_and_exit_2(
    sample_model: SampleModel, capsys, tmp_path
):
    _copy_class(sample_model, "circles", tmp_path / "data")
    _copy_class(sample_model, "squares", tmp_path / "data", as_name="wasps")
    code, out, err = _eval(
        capsys, "--ckpt", str(sample_model.checkpoint), "--source", str(tmp_path / "data")
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "'wasps'" in err
