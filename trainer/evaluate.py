"""Evaluation: a model's loss and accuracy over one pass of a packed folder.

Every rank reads its share of epoch 0 (the same striding as training, padding batches
included) and the sums are all-reduced, so every rank returns the same record:

    {"eval": true, "step": 500, "eval_loss": 0.91, "eval_accuracy": 0.71, "eval_images": 5000}
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from packer.contract.cursor import Cursor
from trainer.data import iter_batches, to_device
from trainer.distributed import all_reduce_sum, autocast
from trainer.model import MODEL_INPUTS, NaViT


@torch.no_grad()
def evaluate(
    model: NaViT,
    source: str | os.PathLike[str],
    step: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """One pass over epoch 0 of `source`: eval_loss and eval_accuracy over labelled images."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, labelled images
    for _, batch in iter_batches(source, Cursor(rank, world_size), end_epoch=1, prefetch=2):
        tensors = to_device(batch, device)
        labels = tensors.pop("labels")
        with autocast(device):
            logits = model(**{name: tensors[name] for name in MODEL_INPUTS}).float()
        labelled = labels >= 0
        if bool(labelled.any()):
            loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            correct = ((logits.argmax(-1) == labels) & labelled).sum()
            totals += torch.tensor([loss_sum.item(), correct.item(), labelled.sum().item()])
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
