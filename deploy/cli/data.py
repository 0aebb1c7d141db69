"""`navit sample-data`, `navit simulate`, `navit pack`: the packer's own commands.

`add_config_arguments`/`config_from_args` (the packing config from `--config FILE` and
repeated `--set KEY=VALUE`) also serve `navit serve` and `navit pretrain`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from packer.config import PackingConfig
from packer.plan import ConfigHistory


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a packing config field, e.g. --set seq_len=512 (repeatable)",
    )
    parser.add_argument("--config", type=Path, help="a JSON file of packing config fields")


def config_from_args(args: argparse.Namespace) -> PackingConfig:
    config = PackingConfig()
    if getattr(args, "config", None):
        config = PackingConfig.from_json(Path(args.config).read_text())
    return config.with_overrides(args.overrides)


def add_sample_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="output folder (ImageFolder layout)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)


def run_sample_data(args: argparse.Namespace) -> int:
    from packer.sample_data import write_sample_dataset

    summary = write_sample_dataset(args.dir, args.images, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    add_config_arguments(parser)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the stats as JSON only")


def run_simulate(args: argparse.Namespace) -> int:
    from packer.index import load_index
    from packer.simulate import simulate

    config = config_from_args(args)
    index = load_index(args.dataset)
    stats = simulate(index, ConfigHistory.start(config), args.epochs).to_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        _print_stats("simulated (from headers, no pixels decoded)", stats, throughput=False)
    return 0


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for *.arrow")
    add_config_arguments(parser)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="fill tasks at once (default: all CPUs)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the stats as JSON only")


def run_pack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from packer.index import index_class_names, index_stats, load_index
    from packer.pipeline import init_ray, pack_to_dir

    config = config_from_args(args)
    index = load_index(args.dataset)
    init_ray(args.ray_address, args.num_cpus)
    history = ConfigHistory.start(config)
    progress = tqdm(
        total=None, unit="batch", disable=args.no_progress or None, file=sys.stderr, desc="pack"
    )

    def on_batch(batch: int) -> None:
        progress.update(1)

    stats = pack_to_dir(
        index, history, args.out, args.epochs, on_batch=on_batch, concurrency=args.concurrency
    ).to_dict()
    progress.close()
    report = {
        "dataset": str(args.dataset),
        "epochs": args.epochs,
        "config_version": history.latest.version,
        "config": config.to_dict(),
        "index": index_stats(index),
        "stats": stats,
    }
    (args.out / "stats.json").write_text(json.dumps(report, indent=2))
    class_names = index_class_names(index)
    if class_names:
        # `navit train --source OUT` reads the class count from here.
        (args.out / "classes.json").write_text(json.dumps(class_names))
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        _print_stats(f"packed into {args.out}", stats)
    return 0


def _print_stats(title: str, stats: dict, throughput: bool = True) -> None:
    print(f"{title}:")
    print(
        f"  images: {stats['images_in']} in, {stats['images_packed']} packed, "
        f"{stats['images_rejected']} rejected {stats['rejected_by_reason'] or ''}".rstrip()
    )
    print(
        f"  sequences: {stats['sequences']} in {stats['batches']} batches, "
        f"{stats['images_per_sequence_mean']} images and "
        f"{stats['tokens_per_image_mean']} tokens per image on average"
    )
    print(
        f"  efficiency: {100 * stats['efficiency']:.2f}% "
        f"({stats['real_tokens']} real / {stats['pad_tokens']} pad tokens)"
    )
    if throughput and stats.get("images_per_s"):
        print(f"  throughput: {stats['images_per_s']} images/s, {stats['tokens_per_s']} tokens/s")
