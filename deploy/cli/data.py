"""`navit sample-data`, `navit simulate`, `navit pack`: the packer's own commands.

`add_config_arguments` (the packing config's `--config FILE` and repeated `--set
KEY=VALUE`, read by `PackingConfig.load`) also serves `navit serve` and `navit pretrain`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.cli import UsageError
from deploy.cli.pack_progress import PackProgress, rejected_lines, summary_lines
from packer.config import PackingConfig
from packer.plan.history import ConfigHistory

if TYPE_CHECKING:
    from packer.index.build import IndexOptions
    from packer.index.classes import ClassSummary

EPOCHS_HELP = "epochs, each reshuffled with its own resolution draws (default: 1)"


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


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """How the dataset's index is built (packer.index.build.IndexOptions)."""
    parser.add_argument(
        "--verify-sizes",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of the image sizes taken from metadata (WebDataset .json, Parquet "
        "width/height) whose header is read to check them; a mismatch refuses the index",
    )
    parser.add_argument(
        "--size-columns",
        default="width,height",
        metavar="W,H",
        help="Parquet columns holding each image's width and height",
    )


def index_options(args: argparse.Namespace) -> IndexOptions:
    from packer.index.build import IndexOptions

    width, _, height = args.size_columns.partition(",")
    try:
        return IndexOptions(
            size_columns=(width.strip(), height.strip()), verify_sizes=args.verify_sizes
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def add_sample_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="output folder (ImageFolder layout)")
    parser.add_argument(
        "--images", type=int, default=300, help="how many images to write (default: 300)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every image's size and drawing (default: 0)"
    )


def run_sample_data(args: argparse.Namespace) -> int:
    from packer.sample_data import write_sample_dataset

    summary = write_sample_dataset(args.dir, args.images, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    add_config_arguments(parser)
    parser.add_argument("--epochs", type=int, default=1, help=EPOCHS_HELP)
    parser.add_argument("--json", action="store_true", help="print the stats as JSON only")
    add_index_arguments(parser)


def check_epochs(epochs: int) -> None:
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")


def run_simulate(args: argparse.Namespace) -> int:
    from packer.index.cache import load_index
    from packer.index.image_index import header_rejects
    from packer.index.reject_ledger import RejectLedger
    from packer.plan.simulate import simulate

    check_epochs(args.epochs)
    config = PackingConfig.load(args.config, args.overrides)
    index = load_index(args.dataset, options=index_options(args))
    classes = show_class_warnings("simulate", index, args.dataset)
    ledger = RejectLedger.for_index(index)
    stats = simulate(index, ConfigHistory.start(config), args.epochs, ledger=ledger).to_dict()
    if args.json:
        print(json.dumps({**stats, **classes.to_dict()}, indent=2))
    else:
        title = "simulated (from headers, no pixels decoded)"
        lines = summary_lines(title, stats, known_failures=len(ledger))
        # Every image left out: header failures, and every decode failure the ledger knows.
        left_out = header_rejects(ledger.apply(index, 0, job_start=len(ledger)))
        print("\n".join([*lines, f"  {classes.line()}", *rejected_lines(left_out)]))
    return 0


def show_class_warnings(command: str, index: Any, dataset: str) -> ClassSummary:
    """The data set's classes; each of their warnings as one line on stderr (never fatal)."""
    from packer.index.classes import class_summary

    classes = class_summary(index, str(dataset))
    for warning in classes.warnings:
        print(f"navit {command}: warning: {warning}", file=sys.stderr)
    return classes


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for *.arrow")
    add_config_arguments(parser)
    parser.add_argument("--epochs", type=int, default=1, help=EPOCHS_HELP)
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="fill tasks pending at once (default: 2 per CPU of the Ray cluster)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress display (by default a live line on a terminal, else a plain line "
        "every 10 s)",
    )
    parser.add_argument("--json", action="store_true", help="print the stats as JSON only")
    add_index_arguments(parser)


def run_pack(args: argparse.Namespace) -> int:
    from packer.contract.classes import write_class_names
    from packer.index.cache import load_index
    from packer.index.image_index import index_stats
    from packer.pipeline import init_ray, pack_to_dir, scan_groups_on_ray
    from packer.plan.simulate import simulate
    from packer.sources import open_source

    check_epochs(args.epochs)
    config = PackingConfig.load(args.config, args.overrides)
    options = index_options(args)
    source = open_source(args.dataset)  # a wrong path fails before Ray starts
    args.out.mkdir(parents=True, exist_ok=True)  # so does an unwritable --out
    init_ray(args.ray_address, args.num_cpus, verbose=args.verbose)
    index = load_index(source, options=options, scanner=scan_groups_on_ray)  # on Ray
    classes = show_class_warnings("pack", index, args.dataset)
    history = ConfigHistory.start(config)
    # The planner alone, before any pixel: what the pack should deliver (the live line's
    # total, and the summary's "predicted").
    predicted = simulate(index, history, args.epochs).to_dict()
    progress = PackProgress(predicted["images_in"], enabled=not args.no_progress)
    try:
        stats = pack_to_dir(
            index,
            history,
            args.out,
            args.epochs,
            on_batch=lambda _, so_far: progress.update(so_far),
            concurrency=args.concurrency,
        ).to_dict()
    finally:
        progress.close()
    report = {
        "dataset": str(args.dataset),
        "epochs": args.epochs,
        "config_version": history.latest.version,
        "config": config.to_dict(),
        "index": index_stats(index),
        **classes.to_dict(),
        "class_warnings": classes.warnings,
        "predicted": predicted,
        "delivered": stats,
    }
    (args.out / "stats.json").write_text(json.dumps(report, indent=2))
    # `navit train --source OUT` sizes its head from these names, `navit eval` maps by them.
    write_class_names(args.out, classes.classes)
    if args.json:
        print(json.dumps({**stats, **classes.to_dict()}, indent=2))
    else:
        epochs = f"{args.epochs} epoch{'s' * (args.epochs != 1)}"
        lines = summary_lines(f"packed into {args.out} ({epochs})", stats, predicted)
        print("\n".join([*lines, f"  {classes.line()}"]))
    return 0
