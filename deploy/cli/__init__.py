"""`navit`: the one command line. Each subcommand's module is imported only when that
subcommand runs, so `navit train` on a GPU box needs just torch and pyarrow, and
`navit --help` is fast.

A subcommand's module has `add_arguments(parser)` and `run(args) -> int` (the exit code);
a module behind several subcommands (deploy.cli.data) names one pair per subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Subcommand(NamedTuple):
    module: str
    help: str
    add_arguments: str = "add_arguments"  # (parser) -> None
    run: str = "run"  # (args) -> exit code


COMMANDS: dict[str, Subcommand] = {
    "sample-data": Subcommand(
        "deploy.cli.data",
        "write a small image-folder dataset",
        "add_sample_data_arguments",
        "run_sample_data",
    ),
    "simulate": Subcommand(
        "deploy.cli.data",
        "predict packing stats from image headers only",
        "add_simulate_arguments",
        "run_simulate",
    ),
    "pack": Subcommand(
        "deploy.cli.data",
        "pack a dataset into Arrow IPC files with Ray Data",
        "add_pack_arguments",
        "run_pack",
    ),
    "serve": Subcommand(
        "deploy.cli.serve", "run the packer service: Flight stream + control plane"
    ),
    "train": Subcommand("deploy.cli.train", "train NaViT from a stream"),
    "pretrain": Subcommand(
        "deploy.cli.pretrain", "run the whole pretrain job locally: service + trainers"
    ),
    "eval": Subcommand("deploy.cli.eval", "score a checkpoint at several resolutions"),
}

EXIT_INVALID_CONFIG = 2
EXIT_INTERRUPTED = 130


def invalid_config(error: Exception) -> int:
    """Say what is wrong with the config in one line; the exit code of a config mistake."""
    print(f"navit: invalid config: {error}", file=sys.stderr)
    return EXIT_INVALID_CONFIG


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    """The `navit` parser; only the `selected` subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="navit", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        if name == selected:
            getattr(importlib.import_module(command.module), command.add_arguments)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `navit ARGV`; returns the exit code (2: a config mistake, 130: Ctrl-C)."""
    from packer.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    run = getattr(importlib.import_module(command.module), command.run)
    try:
        return int(run(args))
    except ConfigError as error:
        return invalid_config(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
