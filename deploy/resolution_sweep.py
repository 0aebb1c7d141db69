"""One model at many resolutions: NaViT's cost/accuracy trade-off, measured (`navit eval`).

The launch layer joins the two halves the layer rule keeps apart: the packer packs the
evaluation images at each fixed resolution in this process (packer.fill.in_process with packer.config.fixed_resolution_config:
the same planner and fill as training's), the trainer scores the batches and times the
model (trainer.evaluate.evaluate_batches). A packed folder or a Flight stream is scored
as it is, one row.

    rows = sweep_dataset(model, index, [64, 128, 256])
    print(format_table(rows))
    write_plot(rows, Path("eval.png"), "tiny at step 300")

One row per resolution: accuracy and loss over the labelled images, the mean real
tokens per image (what the resolution costs: about (r / patch)^2 in area mode), and
images/s and tokens/s of the model on the device used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from packer.config import ResolutionMode, fixed_resolution_config
from packer.contract.classes import label_mapping
from packer.contract.cursor import Cursor
from packer.contract.schema import PackedBatch
from packer.fill.in_process import pack_in_process
from packer.index.image_index import ImageIndex
from packer.index.table import index_class_names
from trainer.data import iter_batches, source_class_names
from trainer.evaluate import EvalResult, evaluate_batches, labels_by_name
from trainer.model import NaViT


@dataclass(frozen=True)
class SweepRow:
    """The model's scores and speed at one resolution (None: a source scored as packed)."""

    resolution: int | None
    result: EvalResult
    rejected: int = 0  # images the fill could not decode at this resolution

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, **self.result.to_dict(), "rejected": self.rejected}


def parse_resolutions(text: str) -> list[int]:
    """'64,96,128' -> [64, 96, 128]: distinct positive integers, in the order given.

    Anything else is a ValueError saying what is wrong, e.g. 'not an integer: "9x"'.
    """
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"an empty entry in {text!r}; give e.g. 64,96,128")
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"not an integer: {part!r}; give e.g. 64,96,128") from None
        if value < 1:
            raise ValueError(f"must be positive, got {value}")
        if value in values:
            raise ValueError(f"{value} given twice")
        values.append(value)
    return values


def sweep_dataset(
    model: NaViT,
    index: ImageIndex,
    resolutions: Sequence[int],
    res_mode: ResolutionMode = "area",
    batch_size: int = 8,
    seq_len: int | None = None,
    device: torch.device | None = None,
    class_names: list[str] | None = None,
) -> list[SweepRow]:
    """Pack `index`'s images at each resolution and score the model on them, one row each.

    The model's patch size is the packing's; `seq_len` defaults to enough for the largest
    image (packer.config.fixed_resolution_config). The same model and index give the same scores and
    tokens on every call (seeded planning, eval mode); only the rates vary. Each packed
    batch's labels are mapped by name onto `class_names` (the model's;
    trainer.evaluate.labels_by_name): a val folder holding only bees/ gets label 1 for a
    model of ["ants", "bees"]; unchanged when either side names no classes.
    """
    data_classes = index_class_names(index) or None
    if data_classes is not None and class_names is not None:
        label_mapping(data_classes, class_names)  # UnknownClasses before anything is packed
    patch_size = model.config.patch_size
    configs = [
        fixed_resolution_config(r, patch_size, res_mode, seq_len, batch_size) for r in resolutions
    ]  # every resolution checked before the first is packed
    rows = []
    for resolution, config in zip(resolutions, configs, strict=True):
        rejected: list[int] = []

        def batches(config=config, rejected=rejected) -> Iterator[PackedBatch]:
            for filled in pack_in_process(index, config):
                rejected.append(len(filled.rejected))
                yield filled.packed

        labelled = labels_by_name(batches(), data_classes, class_names)
        result = evaluate_batches(model, labelled, device)
        rows.append(SweepRow(resolution, result, sum(rejected)))
    return rows


def evaluate_packed(
    model: NaViT,
    source: str | os.PathLike[str],
    device: torch.device | None = None,
    token: str | None = None,
    class_names: list[str] | None = None,
) -> SweepRow:
    """Score epoch 0 of a packed folder or a Flight stream (rank 0 of 1) as it is, its
    labels mapped by name onto the model's `class_names` (trainer.evaluate.labels_by_name)."""
    cursor = Cursor(0, 1)
    data_classes = source_class_names(source, cursor, token)
    if data_classes is not None and class_names is not None:
        label_mapping(data_classes, class_names)  # UnknownClasses before any batch is read
    stream = iter_batches(source, cursor, token=token, prefetch=2, end_epoch=1)
    try:
        batches = labels_by_name((batch for _, batch in stream), data_classes, class_names)
        result = evaluate_batches(model, batches, device)
    finally:
        stream.close()
    return SweepRow(None, result)


def format_table(rows: Sequence[SweepRow]) -> str:
    """The rows as a fixed-width table, e.g.

    resolution  images  tokens/image  accuracy    loss  images/s  tokens/s
            64      41          16.3     0.634   0.912      2210     36012
    """
    header = (
        f"{'resolution':>10}  {'images':>6}  {'tokens/image':>12}  {'accuracy':>8}  "
        f"{'loss':>6}  {'images/s':>8}  {'tokens/s':>9}"
    )
    lines = [header]
    for row in rows:
        r = row.result
        resolution = "as packed" if row.resolution is None else str(row.resolution)
        lines.append(
            f"{resolution:>10}  {r.images:>6}  {r.tokens_per_image:>12.1f}  {r.accuracy:>8.3f}  "
            f"{r.loss:>6.3f}  {r.images_per_s:>8.0f}  {r.tokens_per_s:>9.0f}"
        )
    return "\n".join(lines)


def write_plot(rows: Sequence[SweepRow], path: Path, title: str) -> Path:
    """A PNG of accuracy against mean tokens per image, each point labelled with its
    resolution and images/s: the cost (x) a user pays for the accuracy (y) they get."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    xs = [row.result.tokens_per_image for row in rows]
    ys = [row.result.accuracy for row in rows]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.plot(xs, ys, marker="o", color="tab:blue")
    for row, x, y in zip(rows, xs, ys, strict=True):
        name = "as packed" if row.resolution is None else f"{row.resolution} px"
        label = f"{name}\n{row.result.images_per_s:.0f} img/s"
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(6, -14), fontsize=8)
    if len(xs) > 1 and min(xs) > 0:
        axis.set_xscale("log")
    axis.set_xlabel("tokens per image (mean, real tokens)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0.0, 1.02)
    axis.grid(alpha=0.3)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
