"""run_dir/pretrain.png: the run's loss, accuracy and packing efficiency, drawn at the end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.pretrain.progress import smoothed


def write_plot(
    run_dir: Path,
    records: dict[int, dict[str, Any]],
    samples: list[dict[str, Any]],
    restart_steps: Sequence[int] = (),
    evals: Mapping[int, dict[str, Any]] | None = None,
) -> Path | None:
    """run_dir/pretrain.png: loss (top), accuracy (middle) and efficiency (bottom) against
    the step.

    Training loss and accuracy are rank 0's per step with their EMA; validation ones
    (`evals`, the "eval": true records of the held-out images) are drawn as points.
    Efficiency per step is 1 - pad_fraction of rank 0's batch (every token it trained on:
    delivered); the service's cumulative packing and delivered efficiencies from the
    /stats samples are drawn over it. A dashed line marks a packing
    config change (PATCH), a dotted one a trainer restart.
    """
    steps = sorted(records)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    evals = evals or {}
    val_steps = sorted(evals)
    losses = [records[s]["loss"] for s in steps]
    accuracies = [records[s].get("accuracy", 0.0) for s in steps]
    efficiency = [1.0 - records[s].get("pad_fraction", 0.0) for s in steps]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    top.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="training")
    top.plot(steps, smoothed(losses), color="tab:blue", linewidth=2, label="training (EMA)")
    middle.plot(steps, smoothed(accuracies), color="tab:blue", linewidth=2, label="training (EMA)")
    if val_steps:
        count = evals[val_steps[-1]].get("eval_images", 0)
        label = f"validation ({count} held-out images)"
        val_losses = [evals[s]["eval_loss"] for s in val_steps]
        val_accuracies = [evals[s]["eval_accuracy"] for s in val_steps]
        top.plot(val_steps, val_losses, color="tab:orange", marker="o", label=label)
        middle.plot(val_steps, val_accuracies, color="tab:orange", marker="o", label=label)
    top.set_ylabel("loss")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    middle.set_ylabel("accuracy")
    middle.set_ylim(0.0, 1.02)
    middle.legend(loc="lower right")
    middle.grid(alpha=0.3)
    bottom.plot(steps, efficiency, color="tab:green", alpha=0.3, linewidth=1, label="batch")
    bottom.plot(steps, smoothed(efficiency), color="tab:green", linewidth=2, label="batch (EMA)")
    lows = [min(efficiency)]
    for key, style, label in (
        ("packing_efficiency", "--", "service: packing (sequences with images)"),
        ("delivered_efficiency", "-", "service: delivered (every token sent)"),
    ):
        cumulative = [(s["step"], s[key]) for s in samples if s["step"] and s.get(key)]
        if cumulative:
            xs, ys = zip(*cumulative, strict=True)
            bottom.plot(xs, ys, color="black", linestyle=style, linewidth=1.5, label=label)
            lows.append(min(ys))
    bottom.set_ylabel("efficiency\n(real tokens / all)")
    bottom.set_xlabel("step")
    low = min(lows)
    bottom.set_ylim(max(0.0, low - 0.05), 1.005)
    bottom.legend(loc="lower right")
    bottom.grid(alpha=0.3)
    axes = (top, middle, bottom)
    versions = [(s, records[s].get("config_version")) for s in steps]
    for (_, before), (step, after) in zip(versions, versions[1:], strict=False):
        if after != before:
            for axis in axes:
                axis.axvline(step, color="gray", linestyle="--", linewidth=1)
            bottom.annotate(f"config v{after}", (step, 1.0), fontsize=8, ha="left", va="top")
    for step in restart_steps:
        for axis in axes:
            axis.axvline(step, color="red", linestyle=":", linewidth=1)
    figure.suptitle(f"navit pretrain: {len(steps)} steps")
    figure.tight_layout()
    path = run_dir / "pretrain.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
