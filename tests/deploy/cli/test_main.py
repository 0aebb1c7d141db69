"""`navit` itself: the subcommand table, lazy imports, `python -m deploy.cli`."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[3]


def test_every_subcommand_names_functions_its_module_has() -> None:
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        assert callable(getattr(module, command.add_arguments)), name
        assert callable(getattr(module, command.run)), name


def test_help_imports_no_subcommand_module() -> None:
    code = (
        "import sys\n"
        "from deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ['torch', 'ray', 'pyarrow', 'service', 'trainer', 'deploy.cli.serve',"
        " 'deploy.cli.data', 'deploy.cli.pretrain', 'deploy.cli.train']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "train NaViT from a stream" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_subcommand_imports_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "from deploy.cli import main\n"
        "try:\n    main(['sample-data', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'ray', 'service', 'deploy.cli.serve') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_python_m_deploy_cli_is_navit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--ready-file" in done.stdout


# -- what a user sees when a command cannot run -------------------------------------------


def _dataset_mistakes(root: Path) -> dict[str, Path]:
    """A path that does not exist, an empty folder, a folder of text files, one image."""
    from PIL import Image

    (root / "empty").mkdir()
    (root / "texts").mkdir()
    (root / "texts" / "readme.txt").write_text("not an image\n")
    Image.new("RGB", (8, 8)).save(root / "one.jpg")
    return {
        "missing": root / "nothing-here",
        "empty": root / "empty",
        "texts": root / "texts",
        "single image": root / "one.jpg",
    }


# The words that name each problem in the one line.
_NAMED = {
    "missing": "does not exist",
    "empty": "holds no images",
    "texts": "holds no images",
    "single image": "single image file",
}


@pytest.mark.parametrize("command", ["simulate", "pack", "serve", "pretrain"])
def test_every_dataset_path_mistake_is_one_line_without_traceback_and_exit_2(
    command: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    extra = {
        "pack": ["--out", str(tmp_path / "out")],
        "serve": ["--api-port", "0", "--flight-port", "0"],
        "pretrain": ["--run-dir", str(tmp_path / "run"), "--api-port", "0", "--flight-port", "0"],
    }.get(command, [])
    for mistake, path in _dataset_mistakes(tmp_path).items():
        capfd.readouterr()
        code = main([command, str(path), *extra])
        err = capfd.readouterr().err
        assert code == 2, (mistake, err)
        assert err.count("\n") == 1 and err.startswith("navit: dataset "), (mistake, err)
        assert _NAMED[mistake] in err, (mistake, err)
        assert ": give " in err or ": check " in err, (mistake, err)  # and the fix
        assert "Traceback" not in err


def test_a_dataset_mistake_is_one_line_from_the_navit_process_too(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "simulate", str(tmp_path / "nothing-here")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"navit: dataset '{tmp_path / 'nothing-here'}' does not exist: check the path "
        "(or the URI's bucket)"
    ]


def test_debug_shows_the_traceback_of_a_dataset_mistake(tmp_path: Path) -> None:
    from packer.sources import DatasetError

    with pytest.raises(DatasetError):
        main(["--debug", "simulate", str(tmp_path / "nothing-here")])
    with pytest.raises(DatasetError):  # after the subcommand too
        main(["simulate", str(tmp_path / "nothing-here"), "--debug"])


def test_an_unexpected_error_is_one_line_with_the_debug_hint_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import deploy.cli.data

    def broken(args: object) -> int:
        raise RuntimeError("the planner fell over\nsecond line")

    monkeypatch.setattr(deploy.cli.data, "run_simulate", broken)
    assert main(["simulate", "anything"]) == 1
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "navit: RuntimeError: the planner fell over; second line "
        "(run with --debug for the traceback)"
    ]
    with pytest.raises(RuntimeError):
        main(["--debug", "simulate", "anything"])


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    from packer.sample_data import write_sample_dataset

    write_sample_dataset(tmp_path / "images", 6, seed=2)
    return tmp_path / "images"


def test_an_output_folder_that_cannot_be_made_is_one_line_and_exit_1(
    tiny_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    code = main(["pack", str(tiny_dataset), "--out", str(blocker / "out")])
    err = capfd.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("navit: ") and str(blocker) in err
    assert "Traceback" not in err


def test_a_missing_token_file_is_one_line_and_exit_2_on_serve(
    tiny_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["serve", str(tiny_dataset), "--token-file", str(tmp_path / "no-token"), "--api-port", "0"]
    )
    err = capfd.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"navit: token file {tmp_path / 'no-token'}: No such file or directory"
    ]


def test_a_bad_service_setting_is_one_line_naming_it_and_exit_2(
    tiny_dataset: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", str(tiny_dataset), "--api-port", "70000"])
    err = capfd.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "navit: invalid setting api_port: Input should be less than or equal to 65535 (got 70000)"
    ]


@pytest.mark.parametrize("command", ["simulate", "pack"])
@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_fewer_than_one_epoch_is_an_error_not_a_silent_no_op(
    command: str, epochs: str, tiny_dataset: Path, tmp_path: Path, capfd
) -> None:
    out = ["--out", str(tmp_path / "out")] if command == "pack" else []
    code = main([command, str(tiny_dataset), *out, "--epochs", epochs])
    err = capfd.readouterr().err
    assert code == 2
    assert err.splitlines() == [f"navit: --epochs must be at least 1, got {epochs}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_of_every_command_says_what_it_does(name: str) -> None:
    parser = build_parser(name)
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    command = subparsers.choices[name]
    silent = [
        action.option_strings[0] if action.option_strings else action.dest
        for action in command._actions
        if not (action.help or "").strip()
    ]
    assert silent == [], f"navit {name}: no help text for {silent}"
