"""`navit` itself: the subcommand table, lazy imports, `python -m deploy.cli`."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from deploy.cli import COMMANDS

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
