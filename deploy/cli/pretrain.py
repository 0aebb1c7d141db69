"""`navit pretrain DATASET`: the flags of the local pretrain job (deploy/pretrain/).

The trainer flags are `TrainConfig`'s (trainer/config.py), derived from its fields, with
pretrain's own defaults from `deploy.pretrain.options.TRAINER_DEFAULTS`; the flags the
supervisor sets per rank (`--source`, `--rank`, ...) are not offered.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from deploy.cli import invalid_config
from deploy.cli.data import add_config_arguments
from deploy.cli.options import add_dataclass_arguments, flag_name
from deploy.pretrain.options import (
    DEFAULT_VAL_FRACTION,
    SUPERVISED_FIELDS,
    TRAINER_DEFAULTS,
    TRAINER_FIELDS,
    PretrainOptions,
)
from trainer.config import TrainConfig


def trainer_defaults_help() -> str:
    """TRAINER_DEFAULTS as a line of --help: '--steps 300, --lr 0.002, ...'."""
    flags = {f.name: flag_name(f) for f in dataclasses.fields(TrainConfig)}
    shown = [
        f"{flags[name]} {'a tenth of --steps' if value is None else value}"
        for name, value in TRAINER_DEFAULTS.items()
    ]
    return (
        "TrainConfig's flags; pretrain's own defaults: "
        + ", ".join(shown)
        + "; --num-classes: from the data set's labels"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    add("--trainers", type=int, default=1, help="ranks (DDP when > 1; one GPU each on GPUs)")
    add("--run-dir", type=Path, default=Path("runs/pretrain"), help="outputs (see the docs)")
    add("--resume", action="store_true", help="continue the run in --run-dir")
    add("--host", default="127.0.0.1", help="interface of the control plane and Flight")
    add("--api-port", type=int, default=8000, help="control plane port (0: any free one)")
    add("--flight-port", type=int, default=8815, help="Flight port (0: any free one)")
    add("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    add("--ray-address", default=None, help="use this Ray cluster instead of a local Ray")
    add("--max-restarts", type=int, default=3, help="restarts of failed trainers")
    add("--no-progress", action="store_true", help="a plain status line every 10 s")
    add(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help="share of images held out of training and scored every --eval-every steps "
        f"(default: {DEFAULT_VAL_FRACTION}; 0: none)",
    )
    add("--val-seed", type=int, default=0, help="seed of the held-out split (default: 0)")
    add(
        "--verify-sizes",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of the image sizes taken from metadata whose header is read to check "
        "them; a mismatch refuses the index",
    )
    add_config_arguments(parser)
    trainer = parser.add_argument_group("trainer", trainer_defaults_help())
    add_dataclass_arguments(
        trainer, TrainConfig, defaults=TRAINER_DEFAULTS, exclude=SUPERVISED_FIELDS
    )


def options_from_args(args: argparse.Namespace) -> PretrainOptions:
    """The parsed flags as options (a bad value: ValueError naming the field)."""
    return PretrainOptions(
        dataset=args.dataset,
        trainers=args.trainers,
        run_dir=args.run_dir,
        resume=args.resume,
        host=args.host,
        api_port=args.api_port,
        flight_port=args.flight_port,
        num_cpus=args.num_cpus,
        ray_address=args.ray_address,
        max_restarts=args.max_restarts,
        progress=not args.no_progress,
        verbose=getattr(args, "verbose", False),
        val_fraction=args.val_fraction,
        val_seed=args.val_seed,
        verify_sizes=args.verify_sizes,
        overrides=tuple(args.overrides or ()),
        config_file=args.config,
        training={name: getattr(args, name) for name in TRAINER_FIELDS},
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `navit pretrain`; the exit code (130 after Ctrl-C)."""
    from deploy.pretrain.supervisor import Pretrain

    try:
        options = options_from_args(args)
    except ValueError as error:  # ConfigError, or TrainConfig's ValueError
        return invalid_config(error)
    return Pretrain(options).run()
