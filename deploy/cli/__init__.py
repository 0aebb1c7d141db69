"""`navit`: the one command line. Each subcommand's module is imported only when that
subcommand runs, so `navit train` on a GPU box needs just torch and pyarrow, and
`navit --help` is fast.

A subcommand's module has `add_arguments(parser)` and `run(args) -> int` (the exit code);
a module behind several subcommands (deploy.cli.data) names one pair per subcommand.

What a user sees when a command cannot run: one line on stderr, never a traceback
(`--debug` shows it). A mistake in what was asked for (a dataset path that is no
dataset, a bad config value, a bad token file) exits 2; anything else exits 1.
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
        "pack a dataset into Arrow IPC files on Ray",
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

EXIT_FAILED = 1
EXIT_INVALID_CONFIG = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """What was asked for cannot run, for a reason one line explains (exit 2)."""


def invalid_config(error: Exception) -> int:
    """Say what is wrong with the config in one line; the exit code of a config mistake."""
    print(f"navit: invalid config: {one_line(error)}", file=sys.stderr)
    return EXIT_INVALID_CONFIG


def one_line(error: BaseException) -> str:
    """An error's message on one line: its lines joined by '; ' (or its type's name)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _add_global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    # On the top parser (default False) and on every subcommand (default SUPPRESS, so a
    # flag given before the subcommand is not reset by the subparser's default).
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of an error"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=default,
        help="show Ray's (and the HTTP server's) start-up lines",
    )


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    """The `navit` parser; only the `selected` subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="navit", description=__doc__.split("\n\n")[0])
    _add_global_flags(parser, False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        _add_global_flags(sub, argparse.SUPPRESS)
        if name == selected:
            getattr(importlib.import_module(command.module), command.add_arguments)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `navit ARGV`; returns the exit code (1: failed, 2: a mistake in what was
    asked for, 130: Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    try:
        run = getattr(importlib.import_module(command.module), command.run)
        return int(run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            raise
        return report_error(error)


def report_error(error: Exception) -> int:
    """Print `error` as one line on stderr; its exit code (see the module docstring)."""
    from packer.config import ConfigError
    from packer.sources import DatasetError

    if isinstance(error, ConfigError):
        return invalid_config(error)
    if isinstance(error, (DatasetError, UsageError)):
        print(f"navit: {one_line(error)}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    if isinstance(error, OSError):
        # A folder that cannot be written, a disk that is full, a port in use.
        print(f"navit: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"navit: {type(error).__name__}: {one_line(error)} (run with --debug for the traceback)",
        file=sys.stderr,
    )
    return EXIT_FAILED
