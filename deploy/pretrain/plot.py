"""run_dir/pretrain.png: the run's loss and packing efficiency, drawn at the end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.pretrain.progress import smoothed


def write_plot(
    run_dir: Path,
    records: dict[int, dict[str, Any]],
    samples: list[dict[str, Any]],
    restart_steps: Sequence[int] = (),
) -> Path | None:
    """run_dir/pretrain.png: loss (top) and packing efficiency (bottom) against the step.

    Efficiency per step is 1 - pad_fraction of rank 0's batch; the service's cumulative
    efficiency from the /stats samples is drawn over it. A dashed line marks a packing
    config change (PATCH), a dotted one a trainer restart.
    """
    steps = sorted(records)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    losses = [records[s]["loss"] for s in steps]
    efficiency = [1.0 - records[s].get("pad_fraction", 0.0) for s in steps]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    top.plot(steps, smoothed(losses), color="tab:blue", linewidth=2, label="loss (EMA)")
    top.set_ylabel("training loss")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    bottom.plot(steps, efficiency, color="tab:green", alpha=0.3, linewidth=1, label="batch")
    bottom.plot(steps, smoothed(efficiency), color="tab:green", linewidth=2, label="batch (EMA)")
    cumulative = [(s["step"], s["efficiency"]) for s in samples if s["step"] and s["efficiency"]]
    if cumulative:
        xs, ys = zip(*cumulative, strict=True)
        bottom.plot(xs, ys, color="black", linewidth=1.5, label="service, cumulative")
    bottom.set_ylabel("packing efficiency\n(real tokens / all)")
    bottom.set_xlabel("step")
    low = min(min(efficiency), *(y for _, y in cumulative)) if cumulative else min(efficiency)
    bottom.set_ylim(max(0.0, low - 0.05), 1.005)
    bottom.legend(loc="lower right")
    bottom.grid(alpha=0.3)
    versions = [(s, records[s].get("config_version")) for s in steps]
    for (_, before), (step, after) in zip(versions, versions[1:], strict=False):
        if after != before:
            for axis in (top, bottom):
                axis.axvline(step, color="gray", linestyle="--", linewidth=1)
            bottom.annotate(f"config v{after}", (step, 1.0), fontsize=8, ha="left", va="top")
    for step in restart_steps:
        for axis in (top, bottom):
            axis.axvline(step, color="red", linestyle=":", linewidth=1)
    figure.suptitle(f"navit pretrain: {len(steps)} steps")
    figure.tight_layout()
    path = run_dir / "pretrain.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
