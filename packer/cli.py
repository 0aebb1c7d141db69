"""`navit`: the one command line. Each subcommand's module is imported only when used,
so `navit train` on a GPU box needs just torch and pyarrow, and `navit --help` is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from packer.config import ConfigError

# name -> (module, add-arguments function, run function, help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "sample-data": (
        "packer.commands",
        "add_sample_data_arguments",
        "run_sample_data",
        "write a small image-folder dataset",
    ),
    "simulate": (
        "packer.commands",
        "add_simulate_arguments",
        "run_simulate",
        "predict packing stats from image headers only",
    ),
    "pack": (
        "packer.commands",
        "add_pack_arguments",
        "run_pack",
        "pack a dataset into Arrow IPC files with Ray Data",
    ),
    "serve": (
        "service.serve",
        "add_serve_arguments",
        "run_serve",
        "run the packer service: Flight stream + control plane",
    ),
    "train": ("deploy.cli.train", "add_arguments", "run", "train NaViT from a stream"),
    "pretrain": (
        "service.pretrain",
        "add_pretrain_arguments",
        "run_pretrain",
        "run the whole pretrain job locally: service + trainers",
    ),
}


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="navit", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add_arguments, _, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            getattr(importlib.import_module(module), add_arguments)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    module, _, run, _ = COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except ConfigError as error:
        print(f"navit: invalid config: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
