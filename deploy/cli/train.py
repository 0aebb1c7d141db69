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
from pathlib import Path

import trainer.train as training
from deploy.cli.options import add_dataclass_arguments, dataclass_from_args
from packer.contract.auth import read_token
from packer.contract.cursor import Cursor
from trainer.config import ConfigMismatch, TrainConfig
from trainer.data import source_schema

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
        config = packed_eval_source(config, token)
        training.train(config, token=token)
    except ConfigMismatch as e:  # --num-classes against the data, a resume on other data
        return _usage_error(e)
    return 0


def packed_eval_source(config: TrainConfig, token: str | None) -> TrainConfig:
    """`config` with an unpacked --eval-source (an image folder, WebDataset, Parquet)
    packed into ckpt_dir/eval/rank-R at --eval-resolution (deploy/eval_source.py): the
    trainer scores packed batches only. A source that cannot be packed is ConfigMismatch."""
    source = config.eval_source
    if source is None:
        return config
    try:
        from deploy.eval_source import default_resolution, is_unpacked, pack_eval_source
    except ImportError:  # the trainer image: torch and pyarrow, no packer
        return config
    if not is_unpacked(source):
        return config
    rank, world_size = config.resolved_rank()
    schema = source_schema(config.source, Cursor(rank, world_size), token)
    metadata = (schema.metadata if schema is not None else None) or {}
    patch_size = int(metadata.get(b"patch_size", 16))
    seq_len = int(metadata.get(b"seq_len", 256))
    resolution = config.eval_resolution or default_resolution(patch_size, seq_len)
    out = Path(config.ckpt_dir) / "eval" / f"rank-{rank}"
    try:
        packed = pack_eval_source(source, out, resolution, patch_size, seq_len)
    except (ValueError, OSError) as error:  # DatasetError, ConfigError: one line, exit 2
        raise ConfigMismatch(f"--eval-source {source}: {error}") from None
    if rank == 0:
        print(f"--eval-source {source}: {packed} images packed at {resolution} px into {out}")
    return config.replace(eval_source=str(out))


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
