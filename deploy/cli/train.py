"""`navit train`: train NaViT from a stream of packed batches (trainer/train.py).

The flags are TrainConfig's fields (trainer/config.py), `--source` and `--steps` required.
The trainer image has no `navit` script, so this module also runs on its own, which is
what torchrun starts on each GPU:

    python -m deploy.cli.train --source runs/packed --steps 200 --ckpt runs/tiny
    torchrun --nproc-per-node 8 -m deploy.cli.train --source grpc://packer:8815 ...
"""

from __future__ import annotations

import argparse
import sys

import trainer.train as training
from deploy.cli.options import add_dataclass_arguments, dataclass_from_args
from packer.contract.auth import read_token
from trainer.config import ConfigMismatch, TrainConfig

REQUIRED = ("source", "steps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `navit train` flags, one per TrainConfig field."""
    add_dataclass_arguments(parser, TrainConfig, required=REQUIRED)


def run(args: argparse.Namespace) -> int:
    """Flags -> TrainConfig -> train(); 0 when training ran, 2 on a bad flag or token file
    or a flag the data contradicts (one line on stderr)."""
    try:
        config = dataclass_from_args(TrainConfig, args)
        token = read_token(config.token_file)
    except ValueError as e:  # a bad value names its field, a bad token file its path
        return _usage_error(e)
    try:
        training.train(config, token=token)
    except ConfigMismatch as e:  # --num-classes against the data, a resume on other data
        return _usage_error(e)
    return 0


def _usage_error(error: Exception) -> int:
    print(f"navit train: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.cli.train",
        description=training.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
