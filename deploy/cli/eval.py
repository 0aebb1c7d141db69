"""`navit eval`: one checkpoint at several resolutions, accuracy against cost.

    navit eval --ckpt runs/pretrain/checkpoint.pt --source data/sample \\
        --val-fraction 0.1 --val-seed 0 --resolutions 64,96,128,192 --plot eval.png

A data set source is packed at each resolution in this process (deploy.resolution_sweep)
and scored, one row per resolution; `--val-fraction F --val-seed S` keeps only the images
`navit pretrain --val-fraction F --val-seed S` held out of training (packer.plan.split). A
packed folder or a Flight stream (grpc://...) is scored as it is, one row (epoch 0).
A bad flag, a missing checkpoint or data set: exit 2 with one line saying which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_RESOLUTIONS = "64,96,128,192,256"
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--ckpt", type=Path, required=True, help="checkpoint.pt of navit train / pretrain")
    add("--source", required=True, help="data set, packed folder, or grpc://HOST:PORT")
    add(
        "--resolutions",
        default=DEFAULT_RESOLUTIONS,
        help=f"comma-separated resolutions in px (default: {DEFAULT_RESOLUTIONS})",
    )
    add("--res-mode", choices=("area", "side"), default="area", help="as in packing (area)")
    add("--val-fraction", type=float, default=None, help="score only this held-out split")
    add("--val-seed", "--seed", type=int, default=0, help="seed of the split (default: 0)")
    add("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    add("--batch-size", type=int, default=8, help="sequences per packed batch (default: 8)")
    add("--seq-len", type=int, default=None, help="tokens per sequence (default: fits r)")
    add("--token-file", type=Path, default=None, help="bearer token of a Flight source")
    add("--json", action="store_true", help="print the results as JSON only")
    add("--plot", type=Path, default=None, help="write accuracy vs tokens/image as a PNG")


def _usage_error(message: str) -> int:
    print(f"navit eval: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Score the checkpoint; 0 when it ran, 2 on a bad flag, checkpoint or data set."""
    from deploy.resolution_sweep import parse_resolutions

    try:
        resolutions = parse_resolutions(args.resolutions)
    except ValueError as error:
        return _usage_error(f"--resolutions: {error}")
    if args.batch_size < 1:
        return _usage_error(f"--batch-size: must be at least 1, got {args.batch_size}")
    if args.seq_len is not None and args.seq_len < 1:
        return _usage_error(f"--seq-len: must be at least 1, got {args.seq_len}")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        return _usage_error(f"--val-fraction: must lie in (0, 1), got {args.val_fraction}")
    if args.val_seed < 0:
        return _usage_error(f"--val-seed: must be non-negative, got {args.val_seed}")

    import torch

    from packer.config import ConfigError
    from packer.contract.classes import UnknownClasses
    from trainer.checkpoint import load_trained_model
    from trainer.distributed import pick_device

    try:
        device = pick_device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            return _usage_error(f"--device {args.device}: no CUDA device here")
        model, step, class_names = load_trained_model(args.ckpt)
    except (OSError, ValueError, RuntimeError) as error:  # a missing or foreign file
        return _usage_error(f"--ckpt: {error}".replace("\n", " "))
    model.to(device)
    if class_names is None:
        print(
            "navit eval: warning: the checkpoint names no classes (written before checkpoints "
            "stored them): the data's labels are scored as they are",
            file=sys.stderr,
        )
    try:
        rows, described = _score(model, args, resolutions, device, class_names)
    except (ConfigError, UnknownClasses) as error:
        return _usage_error(str(error))
    except (OSError, ValueError) as error:  # DatasetError is a ValueError
        return _usage_error(f"--source: {error}")

    report = {
        "checkpoint": str(args.ckpt),
        "step": step,
        "source": str(args.source),
        "split": described,
        "device": str(device),
        "res_mode": args.res_mode,
        "patch_size": model.config.patch_size,
        "classes": class_names,
        "rows": [row.to_dict() for row in rows],
    }
    if args.plot is not None:
        from deploy.resolution_sweep import write_plot

        title = f"{args.ckpt} (step {step}), {device}\n{args.source}: {described}"
        write_plot(rows, args.plot, title)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from deploy.resolution_sweep import format_table

    print(
        f"navit eval: {args.ckpt} (step {step}) on {args.source} [{described}], "
        f"{args.res_mode} mode, patch {model.config.patch_size}, device {device}"
    )
    print(format_table(rows))
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0


def _score(
    model, args: argparse.Namespace, resolutions: list[int], device, class_names
) -> tuple[list, str]:
    """(rows, what was scored) for a packed source or a data set, the data's labels mapped
    by class name onto the checkpoint's `class_names`."""
    from deploy.resolution_sweep import evaluate_packed, sweep_dataset
    from trainer.data import PackedFolder, is_flight_source

    source = str(args.source)
    packed = is_flight_source(source)
    if not packed and Path(source).is_dir():
        try:
            PackedFolder(Path(source))
            packed = True
        except FileNotFoundError:  # not a packed folder: a data set folder
            packed = False
    if packed:
        if args.val_fraction is not None:
            raise ValueError("--val-fraction splits a data set, not a packed folder or stream")
        from packer.contract.auth import read_token

        token = read_token(args.token_file) if is_flight_source(source) else None
        rows = [evaluate_packed(model, source, device, token, class_names)]
        return rows, "as packed, epoch 0"

    from packer.index.cache import load_index
    from packer.plan.split import split_index

    index = load_index(source)
    described = f"all {index.num_rows} images"
    if args.val_fraction is not None:
        _, index = split_index(index, args.val_fraction, args.val_seed)
        described = (
            f"held-out split: {index.num_rows} images "
            f"(val_fraction {args.val_fraction}, seed {args.val_seed})"
        )
    if index.num_rows == 0:
        raise ValueError(f"{source}: no images to evaluate ({described})")
    rows = sweep_dataset(
        model,
        index,
        resolutions,
        args.res_mode,
        args.batch_size,
        args.seq_len,
        device,
        class_names=class_names,
    )
    return rows, described
