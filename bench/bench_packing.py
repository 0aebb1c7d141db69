"""Packing efficiency: ours (best-fit decreasing in windows, with carry-over) against
next-fit in input order (the public vit-pytorch NaViT) and the lower bound
ceil(total tokens / seq_len), plus the curve of efficiency against pack_window.

    .venv/bin/python bench/bench_packing.py [--images 200000] [--sample data/sample]

Pure planning (no pixels), so it is exact and machine-independent. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from packer.config import PackingConfig
from packer.packing import lower_bound_sequences
from packer.plan import ConfigHistory
from packer.simulate import simulate
from packer.synthetic import imagenet_like_index


def compare(index, config: PackingConfig) -> dict:
    out = {}
    for name, cfg in [
        ("ours_best_fit_carry", config),
        ("best_fit_no_carry", config.replace(carry_over=False)),
        ("next_fit_in_order", config.replace(packing="next_fit", carry_over=False)),
    ]:
        started = time.perf_counter()
        stats = simulate(index, ConfigHistory.start(cfg))
        out[name] = {
            "efficiency": round(stats.efficiency, 5),
            "sequences": stats.sequences,
            "plan_s": round(time.perf_counter() - started, 2),
        }
    real = stats.real_tokens
    bound = lower_bound_sequences(real, config.seq_len)
    out["lower_bound"] = {
        "efficiency": round(real / (bound * config.seq_len), 5),
        "sequences": bound,
    }
    ours = out["ours_best_fit_carry"]
    out["ours_vs_next_fit_sequences"] = round(
        out["next_fit_in_order"]["sequences"] / ours["sequences"], 4
    )
    out["ours_excess_over_lower_bound"] = ours["sequences"] - bound
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--sample", default=None, help="also measure this dataset (folder)")
    args = parser.parse_args()
    config = PackingConfig()
    report: dict = {"config": config.to_dict()}
    index = imagenet_like_index(args.images, seed=0)
    report[f"imagenet_like_{args.images}"] = compare(index, config)
    curve = {}
    for window in (64, 128, 256, 512, 1024, 2048, 4096):
        cfg = config.replace(pack_window=window)
        curve[window] = {
            "carry": round(simulate(index, ConfigHistory.start(cfg)).efficiency, 5),
            "no_carry": round(
                simulate(index, ConfigHistory.start(cfg.replace(carry_over=False))).efficiency, 5
            ),
        }
    report["efficiency_vs_pack_window"] = curve
    if args.sample:
        from packer.index import load_index

        report["sample"] = compare(load_index(args.sample), config)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
