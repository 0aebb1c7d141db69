"""Evaluation: a model's loss and accuracy over packed batches, and how fast it ran.

Two ways in, one sum per batch (`batch_sums`):

- `evaluate(model, source, step, rank, world_size)`: during training, one pass over
  epoch 0 of a packed folder. Every rank reads its share (the same striding as training,
  padding batches included) and the sums are all-reduced, so every rank returns the same
  metrics.jsonl record:

    {"eval": true, "step": 500, "eval_loss": 0.91, "eval_accuracy": 0.71, "eval_images": 50}

- `evaluate_batches(model, batches)`: one process over any iterable of PackedBatch (what
  `navit eval` packs at each resolution). Besides loss and accuracy it counts the real
  tokens per image and times the model (host-to-device copy and forward pass, the device
  synchronised, packing and decoding excluded), for the cost side of the trade-off:

    EvalResult(images=40, accuracy=0.75, loss=0.62, tokens_per_image=64.0,
               images_per_s=2100.0, tokens_per_s=134400.0, ...)

Loss and accuracy are over labelled images (label -1 = none); tokens over all images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from packer.contract.classes import label_mapping, remap_labels
from packer.contract.cursor import Cursor
from packer.contract.schema import PackedBatch
from trainer.data import iter_batches, source_class_names, to_device
from trainer.distributed import all_reduce_sum, autocast
from trainer.model import MODEL_INPUTS, NaViT


@dataclass(frozen=True)
class EvalResult:
    """One evaluation pass: what the model scored and what it cost."""

    images: int  # images seen (labelled or not)
    labelled: int  # images with a label: the ones loss and accuracy count
    accuracy: float
    loss: float
    tokens: int  # real (non-padding) tokens seen
    seconds: float  # model time: copies to the device and forward passes

    @property
    def tokens_per_image(self) -> float:
        return self.tokens / self.images if self.images else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "tokens_per_image": self.tokens_per_image,
            "images_per_s": self.images_per_s,
            "tokens_per_s": self.tokens_per_s,
        }


def batch_sums(model: NaViT, batch: PackedBatch, device: torch.device) -> torch.Tensor:
    """[loss sum, correct, labelled images] of one batch, float64 on the CPU.

    A label the model has no class for is a ValueError naming it (cross entropy would
    fail with an index error on the CPU and a device-side assert on CUDA).
    """
    num_classes = model.config.num_classes
    if batch.labels.size and int(batch.labels.max()) >= num_classes:
        raise ValueError(
            f"label {int(batch.labels.max())} >= the model's num_classes={num_classes}: "
            "the data has classes the model was not trained on"
        )
    tensors = to_device(batch, device)
    labels = tensors.pop("labels")
    if batch.num_images == 0:  # an all-padding batch: nothing to score
        return torch.zeros(3, dtype=torch.float64)
    with autocast(device):
        logits = model(**{name: tensors[name] for name in MODEL_INPUTS}).float()
    labelled = labels >= 0
    if not bool(labelled.any()):
        return torch.zeros(3, dtype=torch.float64)
    loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & labelled).sum()
    return torch.tensor(
        [loss_sum.item(), correct.item(), labelled.sum().item()], dtype=torch.float64
    )


def labels_by_name(
    batches: Iterable[PackedBatch], data_classes: list[str] | None, model_classes: list[str] | None
) -> Iterator[PackedBatch]:
    """`batches` with their labels mapped by class name onto the model's classes
    (packer.contract.classes): a folder holding only bees/ labels them 0, which a model of
    ["ants", "bees"] calls 1. Unchanged when either side names no classes; a class the
    model does not know is UnknownClasses, before any batch is scored."""
    if data_classes is None or model_classes is None or data_classes == model_classes:
        yield from batches
        return
    mapping = label_mapping(data_classes, model_classes)
    for batch in batches:
        batch.labels = remap_labels(batch.labels, mapping)
        yield batch


@torch.no_grad()
def evaluate(
    model: NaViT,
    source: str | os.PathLike[str],
    step: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """One pass over epoch 0 of `source`: eval_loss and eval_accuracy over labelled images,
    its labels mapped by name onto the model's `class_names` (see labels_by_name)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, labelled images
    cursor = Cursor(rank, world_size)
    stream = iter_batches(source, cursor, end_epoch=1, prefetch=2)
    batches = labels_by_name(
        (batch for _, batch in stream), source_class_names(source, cursor), class_names
    )
    for batch in batches:
        totals += batch_sums(model, batch, device)
    totals = all_reduce_sum(totals, device)
    model.train(was_training)
    count = max(totals[2].item(), 1.0)
    return {
        "eval": True,
        "step": step,
        "eval_loss": totals[0].item() / count,
        "eval_accuracy": totals[1].item() / count,
        "eval_images": int(totals[2].item()),
    }


@torch.no_grad()
def evaluate_batches(
    model: NaViT,
    batches: Iterable[PackedBatch],
    device: torch.device | None = None,
    warmup: bool = True,
) -> EvalResult:
    """Loss, accuracy, tokens and model time over `batches`, in this process.

    `warmup` runs the first batch once untimed before the pass (kernel selection, CUDA
    context, flex attention's compilation), so the rate measures steady-state inference;
    the scores are the same either way (eval mode, no randomness).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    images = tokens = 0
    seconds = 0.0
    for batch in batches:
        if warmup and batch.num_images:
            batch_sums(model, batch, device)
            warmup = False
        _synchronize(device)
        started = time.perf_counter()
        totals += batch_sums(model, batch, device)  # .item() inside waits for the device
        _synchronize(device)
        seconds += time.perf_counter() - started
        images += batch.num_images
        tokens += batch.real_tokens
    model.train(was_training)
    labelled = int(totals[2].item())
    count = max(labelled, 1)
    return EvalResult(
        images=images,
        labelled=labelled,
        accuracy=totals[1].item() / count,
        loss=totals[0].item() / count,
        tokens=tokens,
        seconds=seconds,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
