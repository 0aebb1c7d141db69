"""Train NaViT from a stream of packed batches (a folder of Arrow files or the Flight service).

    python -m trainer.train --source runs/packed --model tiny --steps 200 --ckpt runs/tiny
    python -m trainer.train --source grpc://packer:8815 --model b16 --steps 100000 \\
        --ckpt /ckpt/b16 --token-file /secrets/token --compile          # one GPU
    torchrun --nproc-per-node 8 -m trainer.train --source grpc://packer:8815 ...  # DDP

One batch is one optimizer step. AdamW with linear warmup then cosine decay to zero over
`--steps`, gradient clipping, bf16 autocast on CUDA, optional torch.compile, DDP when the
world size is above 1 (rank and world size from the flags or torchrun's env variables).

Number of classes: `--num-classes` when given; else `classes.json` in the source folder
(a list of class names, a {name: id} dict, or {"num_classes": n}); else 1000. It is never
inferred from the first batches: a class missing from them would be silently cut off. A
label >= num_classes stops training with an error naming it.

Files in `--ckpt DIR` (rank 0 writes them): `checkpoint.pt` (atomic: temp file, fsync,
rename) with model, optimizer, scheduler, step, RNG states and the data cursor, written
every `--ckpt-every` steps and at the end; `metrics.jsonl`, one JSON line per logged step
(and eval lines with "eval": true). `--resume` continues from the cursor; on CPU the
losses then equal those of an uninterrupted run exactly (seeded init, no dropout, the
same batches from the cursor). The LR schedule always spans `--steps`; `--stop-at` ends a
run early (e.g. a preemptible time slot) without changing the schedule.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from packer.contract.schema import PackedBatch
from trainer.data import Cursor, is_flight_source, iter_batches, to_device
from trainer.model import MODEL_INPUTS, MODEL_SIZES, NaViT, NaViTConfig, build_model

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
DEFAULT_NUM_CLASSES = 1000


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The `navit train` flags (shared by `python -m trainer.train`)."""
    add = parser.add_argument
    add("--source", required=True, help="grpc://HOST:PORT (Flight service) or a packed folder")
    add("--model", default="tiny", choices=sorted(MODEL_SIZES), help="model size")
    add("--steps", type=int, required=True, help="optimizer steps; the LR schedule spans them")
    add("--ckpt", default="runs/train", help="folder for checkpoint.pt and metrics.jsonl")
    add("--ckpt-every", type=int, default=1000, help="checkpoint every N steps (0: at end)")
    add("--stop-at", type=int, default=None, help="stop after this step (schedule unchanged)")
    add("--rank", type=int, default=None, help="this process's rank (default: env RANK or 0)")
    add("--world-size", type=int, default=None, help="ranks (default: env WORLD_SIZE or 1)")
    add("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    add("--lr", type=float, default=1e-3, help="peak learning rate")
    add("--warmup-steps", type=int, default=100)
    add("--weight-decay", type=float, default=0.05)
    add("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--num-classes", type=int, default=None, help="default: classes.json, else 1000")
    add("--token-file", default=None, help="file holding the bearer token (or env NAVIT_TOKEN)")
    add("--eval-source", default=None, help="packed folder for evaluation (one resolution)")
    add("--eval-every", type=int, default=0, help="evaluate every N steps (0: at end only)")
    add("--seed", type=int, default=0, help="seed of the model init")
    add("--log-every", type=int, default=1, help="write a metrics line every N steps")
    add("--no-progress", action="store_true", help="no tqdm progress bar")
    add("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    add("--prefetch", type=int, default=2, help="batches read ahead by a background thread")
    add("--pos-mode", default="fractional", choices=("fractional", "absolute"))
    add("--attn-impl", default="auto", choices=("auto", "sdpa", "flex"))


def run_train(args: argparse.Namespace) -> int:
    """Entry point of `navit train`: flags -> train(); returns the exit code 0."""
    token = os.environ.get("NAVIT_TOKEN") or None
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    train(
        source=args.source,
        model=args.model,
        steps=args.steps,
        ckpt_dir=args.ckpt,
        ckpt_every=args.ckpt_every,
        stop_at=args.stop_at,
        rank=args.rank,
        world_size=args.world_size,
        resume=args.resume,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        compile_model=args.compile,
        num_classes=args.num_classes,
        token=token,
        eval_source=args.eval_source,
        eval_every=args.eval_every,
        seed=args.seed,
        log_every=args.log_every,
        progress=not args.no_progress,
        device=args.device,
        prefetch=args.prefetch,
        pos_mode=args.pos_mode,
        attn_impl=args.attn_impl,
    )
    return 0


def train(
    source: str | os.PathLike[str],
    steps: int,
    model: str = "tiny",
    ckpt_dir: str | os.PathLike[str] | None = None,
    ckpt_every: int = 0,
    stop_at: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    resume: bool = False,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    weight_decay: float = 0.05,
    grad_clip: float = 1.0,
    compile_model: bool = False,
    num_classes: int | None = None,
    token: str | None = None,
    eval_source: str | os.PathLike[str] | None = None,
    eval_every: int = 0,
    seed: int = 0,
    log_every: int = 1,
    progress: bool = True,
    device: str | None = None,
    prefetch: int = 2,
    pos_mode: str = "fractional",
    attn_impl: str = "auto",
) -> list[dict[str, Any]]:
    """Train and return the metric records of this run (the lines of metrics.jsonl)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    torch_device = _pick_device(device)
    if world_size > 1:
        _init_distributed(rank, world_size, torch_device)
    ckpt_path = Path(ckpt_dir) / CHECKPOINT_NAME if ckpt_dir else None
    checkpoint = _load_checkpoint(ckpt_path) if resume else None
    if resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    start_step = checkpoint["step"] if checkpoint else 0
    cursor: Cursor = (0, 0)
    if checkpoint:
        cursor = (checkpoint["cursor"]["epoch"], checkpoint["cursor"]["batch"])

    batches = iter_batches(source, rank, world_size, *cursor, token=token, prefetch=prefetch)
    started = time.perf_counter()
    first = next(batches, None)  # the model's patch size comes from the data
    if first is None:
        raise RuntimeError(f"{source}: no batches to train on")
    first_wait = time.perf_counter() - started
    num_classes = num_classes or _classes_from_folder(source) or DEFAULT_NUM_CLASSES

    torch.manual_seed(seed)
    if checkpoint:
        config = NaViTConfig(**checkpoint["model_config"])
        if config.patch_size != first[1].patch_size:
            raise ValueError(f"checkpoint patch size {config.patch_size} != data's")
        navit = NaViT(config)
        navit.load_state_dict(checkpoint["model"])
    else:
        navit = build_model(
            model,
            num_classes,
            patch_size=first[1].patch_size,
            pos_mode=pos_mode,  # type: ignore[arg-type]
            attn_impl=attn_impl,
        )
    navit.to(torch_device)
    optimizer = _make_optimizer(navit, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps, steps)
    )
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"])
        if checkpoint.get("steps") != steps:
            previous = checkpoint.get("steps")
            warnings.warn(f"resuming with --steps {steps}, checkpoint had {previous}", stacklevel=2)
    step_model: nn.Module = navit
    if world_size > 1:
        device_ids = [torch_device] if torch_device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(navit, device_ids=device_ids)
    if compile_model:
        step_model = torch.compile(step_model)  # type: ignore[assignment]

    is_main = rank == 0
    metrics_path = Path(ckpt_dir) / METRICS_NAME if ckpt_dir and is_main else None
    log = MetricsLog(metrics_path, start_step if checkpoint else None)
    autocast = _autocast(torch_device)
    last_step = min(steps, stop_at) if stop_at is not None else steps
    bar = tqdm(total=steps, initial=start_step, disable=not progress or not is_main, unit="step")
    stream = _chain_first(first, batches)
    first_wait_left = first_wait
    completed = start_step
    for step in range(start_step + 1, last_step + 1):
        # The first step also counts the wait for the first batch, fetched before the model.
        step_begin, first_wait_left = time.perf_counter() - first_wait_left, 0.0
        item = next(stream, None)
        data_wait = time.perf_counter() - step_begin
        if item is None:  # a finite stream ended early
            warnings.warn(f"{source}: data ended after step {completed}", stacklevel=2)
            break
        (epoch, batch_index), batch = item
        _check_labels(batch, navit.config.num_classes)
        tensors = to_device(batch, torch_device)
        labels = tensors.pop("labels")
        with autocast:
            logits = step_model(**{name: tensors[name] for name in MODEL_INPUTS})
        loss, correct = classification_loss(logits, labels, int((batch.labels >= 0).sum()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(navit.parameters(), grad_clip)
        lr_now = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        completed, cursor = step, (epoch, batch_index + 1)

        if step % log_every == 0 or step == last_step:
            loss_value = float(loss.item())  # syncs the device, so only on logged steps
            step_time = time.perf_counter() - step_begin
            record = _step_record(step, cursor, batch, loss_value, int(correct), lr_now)
            record.update(_throughput(batch, step_time, data_wait))
            log.write(record)
            bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{record['accuracy']:.3f}")
        bar.update(1)
        if ckpt_path and ckpt_every and step % ckpt_every == 0 and step != last_step:
            _save_checkpoint_on_main(ckpt_path, navit, optimizer, scheduler, step, cursor, steps)
        if eval_source and eval_every and step % eval_every == 0 and step != last_step:
            log.write(evaluate(navit, eval_source, step, rank, world_size, torch_device))
    bar.close()
    stream.close()  # stops the prefetch thread
    if ckpt_path:
        _save_checkpoint_on_main(ckpt_path, navit, optimizer, scheduler, completed, cursor, steps)
    if eval_source:
        log.write(evaluate(navit, eval_source, completed, rank, world_size, torch_device))
    log.close()
    if world_size > 1:
        dist.destroy_process_group()
    return log.records


# ---------------------------------------------------------------------------------------
# Loss, schedule, optimizer


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_labelled: int
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Mean cross entropy over labelled images (label -1 = none) and the correct count.

    `num_labelled` comes from the host-side labels, so no device sync is needed here. A
    batch without labelled images (an all-padding batch from rank equalisation) gives
    loss 0 * sum(logits): zero, but with every parameter in the graph, so backward runs
    and DDP's gradient all-reduce stays in lockstep with the other ranks.
    """
    logits = logits.float()  # [N, C]
    if num_labelled == 0:
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(logits, labels, ignore_index=-1)
    correct = (logits.argmax(-1) == labels).sum()  # label -1 never equals an argmax
    return loss, correct


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    # LambdaLR multiplier at optimizer step `step` (0-based): linear warmup to 1, then
    # cosine to 0 at total_steps. warmup 100, total 1000: step 49 -> 0.5, step 550 -> 0.5.
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # Decay matrices only: not norms, biases, positional tables or the pooling query.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        keep = parameter.ndim < 2 or name.startswith("positions.") or name == "head.query"
        (no_decay if keep else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def _check_labels(batch: PackedBatch, num_classes: int) -> None:
    if batch.labels.size and int(batch.labels.max()) >= num_classes:
        raise ValueError(
            f"label {int(batch.labels.max())} >= num_classes={num_classes}; "
            "pass --num-classes or put classes.json next to the packed folder"
        )


def _classes_from_folder(source: str | os.PathLike[str]) -> int | None:
    if is_flight_source(source):
        return None
    path = Path(source) / "classes.json"
    if not path.is_file():
        return None
    classes = json.loads(path.read_text())
    if isinstance(classes, dict) and "num_classes" in classes:
        return int(classes["num_classes"])
    if isinstance(classes, dict) and "classes" in classes:
        return len(classes["classes"])
    return len(classes)


# ---------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: NaViT,
    source: str | os.PathLike[str],
    step: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """One pass over epoch 0 of a packed folder: eval_loss and eval_accuracy (all ranks)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, labelled images
    for _, batch in iter_batches(source, rank, world_size, end_epoch=1, prefetch=2):
        tensors = to_device(batch, device)
        labels = tensors.pop("labels")
        with _autocast(device):
            logits = model(**{name: tensors[name] for name in MODEL_INPUTS}).float()
        labelled = labels >= 0
        if bool(labelled.any()):
            loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            correct = ((logits.argmax(-1) == labels) & labelled).sum()
            totals += torch.tensor([loss_sum.item(), correct.item(), labelled.sum().item()])
    if world_size > 1:
        reduced = totals.to(device)
        dist.all_reduce(reduced)
        totals = reduced.cpu()
    model.train(was_training)
    count = max(totals[2].item(), 1.0)
    return {
        "eval": True,
        "step": step,
        "eval_loss": totals[0].item() / count,
        "eval_accuracy": totals[1].item() / count,
        "eval_images": int(totals[2].item()),
    }


# ---------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old or the new checkpoint, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _save_checkpoint_on_main(
    path: Path,
    model: NaViT,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    cursor: Cursor,
    steps: int,
) -> None:
    # Ranks move in lockstep (equal batch counts), so rank 0's cursor is every rank's.
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    state = {
        "model": model.state_dict(),
        "model_config": asdict(model.config),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "steps": steps,
        "cursor": {"epoch": cursor[0], "batch": cursor[1]},
        "rng": _rng_state(),
    }
    save_checkpoint(path, state)


def _load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """metrics.jsonl plus the records of this run in memory.

    A fresh run replaces the file. A resumed run keeps the lines up to the checkpoint's
    step and appends after them: lines a crashed run wrote after its last checkpoint are
    dropped, because the resumed run computes those steps again.
    """

    def __init__(self, path: Path | None, resume_step: int | None) -> None:
        self.records: list[dict[str, Any]] = []
        self.handle = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= resume_step:
                    kept.append(line + "\n")
        self.handle = open(path, "w")  # noqa: SIM115 closed in close()
        self.handle.writelines(kept)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _step_record(
    step: int, cursor: Cursor, batch: PackedBatch, loss: float, correct: int, lr: float
) -> dict[str, Any]:
    labelled = int((batch.labels >= 0).sum())
    return {
        "step": step,
        "epoch": cursor[0],
        "next_batch": cursor[1],
        "loss": loss,
        "accuracy": correct / labelled if labelled else 0.0,
        "lr": lr,
        "images": batch.num_images,
        "config_version": batch.config_version,
    }


def _throughput(batch: PackedBatch, step_time: float, data_wait: float) -> dict[str, float]:
    total = batch.segment_ids.size
    return {
        "images_per_s": batch.num_images / step_time,
        "tokens_per_s": batch.real_tokens / step_time,  # real tokens only, not padding
        "pad_fraction": batch.pad_tokens / total if total else 0.0,
        "data_wait_s": data_wait,
        "step_s": step_time,
    }


# ---------------------------------------------------------------------------------------
# Devices and processes


def _pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _init_distributed(rank: int, world_size: int, device: torch.device) -> None:
    # torchrun sets MASTER_ADDR/PORT; single-machine runs launched by hand get a default.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _chain_first(
    first: tuple[Cursor, PackedBatch], rest: Iterator[tuple[Cursor, PackedBatch]]
) -> Generator[tuple[Cursor, PackedBatch], None, None]:
    yield first
    yield from rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
