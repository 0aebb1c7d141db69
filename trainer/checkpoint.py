"""The training checkpoint: what `checkpoint.pt` holds, how it is written and read back.

One file, written by rank 0 only (`save_on_main`) and atomically (a reader sees the old
checkpoint or the new one, never half of one), holding

    model, model_config     the NaViT weights and the NaViTConfig they belong to
    optimizer, scheduler    AdamW and LambdaLR state
    step, steps             optimizer steps done, and the run's total (the LR schedule's span)
    class_names             what each output of the head means, in label order (None when
                            the data named no classes; packer.contract.classes)
    cursor                  Cursor.to_dict() of rank 0 after its last trained batch
    rng                     torch, CUDA, numpy and Python RNG states

Ranks move in lockstep (every rank gets the same number of batches per epoch), so rank
0's cursor is every rank's: rank r resumes from `resume_cursor(state, r, world_size)`.
Checkpoints written before the cursor had ranks stored `{"epoch": e, "batch": k}` (k the
next batch); they still load, the rank and world size then coming from the resumed run.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from packer.contract.cursor import Cursor
from packer.contract.files import write_atomically
from trainer.model import NaViT, NaViTConfig


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename)."""
    write_atomically(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state in `path`; a missing file is a FileNotFoundError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_on_main(
    path: str | os.PathLike[str],
    model: NaViT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    steps: int,
    cursor: Cursor,
    class_names: list[str] | None,
) -> None:
    """Checkpoint the run on rank 0; other ranks write nothing (see the module doc)."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    state = {
        "model": model.state_dict(),
        "model_config": asdict(model.config),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "steps": steps,
        "cursor": cursor.to_dict(),
        "class_names": class_names,
        "rng": rng_state(),
    }
    save_checkpoint(path, state)


def resume_cursor(state: dict[str, Any], rank: int, world_size: int) -> Cursor:
    """Where rank `rank` of `world_size` continues: the stored epoch and next batch.

    {"rank": 0, "world_size": 2, "epoch": 1, "next_batch": 4} resumes rank 1 of 2 at
    Cursor(1, 2, 1, 4); the old {"epoch": 1, "batch": 4} gives the same.
    """
    stored = state["cursor"]
    if "next_batch" in stored:
        saved = Cursor.from_dict(stored)
        if saved.world_size != world_size:
            # Batch k of one striding is not batch k of another: some batches of this
            # epoch will be skipped or repeated. The next epoch starts clean.
            warnings.warn(
                f"resuming with world_size {world_size}, checkpoint had {saved.world_size}",
                stacklevel=2,
            )
        return Cursor(rank, world_size, saved.epoch, saved.next_batch)
    return Cursor(rank, world_size, int(stored["epoch"]), int(stored["batch"]))


def restore_model(state: dict[str, Any], patch_size: int) -> NaViT:
    """The checkpoint's NaViT; its patch size must be the data's."""
    config = NaViTConfig(**state["model_config"])
    if config.patch_size != patch_size:
        raise ValueError(f"checkpoint patch size {config.patch_size} != data's {patch_size}")
    model = NaViT(config)
    model.load_state_dict(state["model"])
    return model


class TrainedModel(NamedTuple):
    """A checkpoint's model in eval mode on the CPU, the step it was saved at, and the
    class names of its head (None for a checkpoint written before they were stored)."""

    model: NaViT
    step: int
    class_names: list[str] | None


def load_trained_model(path: str | os.PathLike[str]) -> TrainedModel:
    """What `navit eval` scores: the weights, config and class names only, no optimizer
    or data state. A missing file is a FileNotFoundError naming it, a file without a
    model a ValueError."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path}: not a navit checkpoint ({first_line})") from error
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not a navit checkpoint (no model and model_config)")
    config = NaViTConfig(**state["model_config"])
    model = restore_model(state, config.patch_size)
    return TrainedModel(model.eval(), int(state.get("step", 0)), state.get("class_names"))


def restore_training(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
) -> None:
    """Load the optimizer, scheduler and RNG states, warning if `steps` changed."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if state.get("steps") != steps:
        previous = state.get("steps")
        warnings.warn(f"resuming with --steps {steps}, checkpoint had {previous}", stacklevel=2)


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # A list, not an array: weights_only loading accepts plain containers.
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
