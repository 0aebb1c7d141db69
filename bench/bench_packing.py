"""Packing efficiency: ours (exact fit in windows, with carry-over) against best-fit
decreasing (with and without carry-over), next-fit in input order (the public vit-pytorch
NaViT) and the lower bound ceil(total tokens / seq_len), plus the curve of efficiency
against pack_window.

    .venv/bin/python bench/bench_packing.py [--images 200000] [--sample data/sample]

Pure planning (no pixels), so it is exact and machine-independent. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from packer.config import PackingConfig
from packer.plan.history import ConfigHistory
from packer.plan.packing import lower_bound_sequences
from packer.plan.planner import EpochPlanner
from packer.plan.shuffle import EpochOrder
from packer.plan.simulate import simulate
from packer.synthetic import imagenet_like_index


def compare(index, config: PackingConfig) -> dict:
    out = {}
    for name, cfg in [
        ("ours_exact_fit_carry", config),
        ("exact_fit_no_carry", config.replace(carry_over=False)),
        ("best_fit_carry", config.replace(packing="best_fit")),
        ("best_fit_no_carry", config.replace(packing="best_fit", carry_over=False)),
        ("next_fit_in_order", config.replace(packing="next_fit", carry_over=False)),
    ]:
        started = time.perf_counter()
        stats = simulate(index, ConfigHistory.start(cfg))
        out[name] = {
            "efficiency": round(stats.packing_efficiency, 5),
            "sequences": stats.sequences,
            "plan_s": round(time.perf_counter() - started, 2),
        }
    real = stats.real_tokens
    bound = lower_bound_sequences(real, config.seq_len)
    out["lower_bound"] = {
        "efficiency": round(real / (bound * config.seq_len), 5),
        "sequences": bound,
    }
    ours = out["ours_exact_fit_carry"]
    out["ours_vs_next_fit_sequences"] = round(
        out["next_fit_in_order"]["sequences"] / ours["sequences"], 4
    )
    out["ours_excess_over_lower_bound"] = ours["sequences"] - bound
    return out


def fill_and_wait(index, config: PackingConfig) -> dict:
    """How many sequences end exactly full, and how long images wait across windows:
    exact fit keeps small images waiting to finish later sequences. An image's wait is the
    window whose planning shipped it minus the window it was drawn in (best fit's carried
    bins wait the same way)."""
    planner = EpochPlanner(index, ConfigHistory.start(config), 0)
    full = sequences = 0
    order = EpochOrder(index.num_rows, config.seed, 0)
    places = order.span(0, order.domain)
    drawn = places[places < index.num_rows]  # every synthetic image is plannable
    drawn_at = np.empty(index.num_rows, np.int64)
    drawn_at[drawn] = np.arange(len(drawn)) // config.pack_window
    waits = []
    for layout in planner.iter_layouts():
        shipped = planner.next_window - 1
        waits += (shipped - drawn_at[layout.rows]).tolist()
        if len(layout.rows):
            tokens = np.bincount(layout.sequence, weights=layout.num_kept)
            full += int((tokens == config.seq_len).sum())
            sequences += int((tokens > 0).sum())
    waits = np.array(waits)
    return {
        "sequences_exactly_full": round(full / sequences, 5),
        "images_shipped_in_a_later_window": round(float((waits > 0).mean()), 5),
        "mean_wait_windows": round(float(waits.mean()), 4),
        "max_wait_windows": int(waits.max()),
    }


# Other configs, to show where each strategy wins (same 30k-image stream for each).
_OTHER_CONFIGS = [
    {"seq_len": 256, "max_res": 128},
    {"seq_len": 512, "max_res": 352},
    {"seq_len": 2048, "max_res": 512},
    {"res_dist": "truncnorm"},
    {"token_drop": "beta", "drop_rate": 0.5},
    {"res_mode": "side"},
    {"patch_size": 32, "max_res": 512},
    {"max_images_per_seq": 4},
]


def other_configs(config: PackingConfig) -> list[dict]:
    index = imagenet_like_index(30_000, seed=1)
    rows = []
    for changes in _OTHER_CONFIGS:
        cfg = config.replace(**changes)
        row: dict = {"changes": changes}
        for packing in ("exact_fit", "best_fit", "next_fit"):
            stats = simulate(index, ConfigHistory.start(cfg.replace(packing=packing)))
            row[packing] = round(stats.packing_efficiency, 5)
        bound = lower_bound_sequences(stats.real_tokens, cfg.seq_len)
        row["lower_bound"] = round(stats.real_tokens / (bound * cfg.seq_len), 5)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--sample", default=None, help="also measure this dataset (folder)")
    args = parser.parse_args()
    config = PackingConfig()
    report: dict = {"config": config.to_dict()}
    index = imagenet_like_index(args.images, seed=0)
    report[f"imagenet_like_{args.images}"] = compare(index, config)
    report["fill_and_wait"] = {
        packing: fill_and_wait(index, config.replace(packing=packing))
        for packing in ("exact_fit", "best_fit")
    }
    curve = {}
    for window in (64, 128, 256, 512, 1024, 2048, 4096):
        cfg = config.replace(pack_window=window)
        curve[window] = {
            f"{packing}_{'carry' if carry else 'no_carry'}": round(
                simulate(
                    index, ConfigHistory.start(cfg.replace(packing=packing, carry_over=carry))
                ).packing_efficiency,
                5,
            )
            for packing in ("exact_fit", "best_fit")
            for carry in (True, False)
        }
    report["efficiency_vs_pack_window"] = curve
    report["other_configs"] = other_configs(config)
    if args.sample:
        from packer.index.cache import load_index

        report["sample"] = compare(load_index(args.sample), config)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
