"""Where a rank runs: its device, its process group, and the model wrapped for it.

One process per rank. A world of 1 has no process group at all; above 1 the ranks join
one (NCCL on CUDA, gloo on CPU) through torchrun's MASTER_ADDR/MASTER_PORT, defaulting
to 127.0.0.1:29500 for ranks started by hand on one machine, and the model is wrapped in
DistributedDataParallel so that backward all-reduces the gradients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def pick_device(name: str | None) -> torch.device:
    """`name` if given; else this rank's GPU (torchrun's LOCAL_RANK) if any; else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(rank: int, world_size: int, device: torch.device) -> Iterator[None]:
    """Join the ranks' process group for the block (nothing to join when world_size is 1)."""
    if world_size == 1:
        yield
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    try:
        yield
        # Leave together: a rank that tears its gloo pairs down while a peer is still in
        # the last collective (the final evaluation's all-reduce) can make that peer abort
        # at exit ("terminate called without an active exception", seen 1 run in 4).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device, compile_model: bool) -> nn.Module:
    """The module the steps run: DDP inside a process group, then torch.compile if asked.

    The returned module shares its parameters with `model`, which is what checkpoints,
    gradient clipping and evaluation use.
    """
    wrapped = model
    if dist.is_initialized():
        device_ids = [device] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` summed over the ranks (itself outside a process group), on its own device."""
    if not dist.is_initialized():
        return tensor
    reduced = tensor.to(device)  # NCCL reduces device tensors only
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
