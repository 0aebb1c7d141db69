"""The training loop: `train(TrainConfig(...))` trains NaViT from a stream of packed batches.

    navit train --source runs/packed --model tiny --steps 200 --ckpt runs/tiny
    navit train --source grpc://packer:8815 --model b16 --steps 100000 \\
        --ckpt /ckpt/b16 --token-file /secrets/token --compile            # one GPU
    torchrun --nproc-per-node 8 ... train --source grpc://packer:8815 ...  # DDP: deploy/train.sh

One batch is one optimizer step. AdamW with linear warmup then cosine decay to zero over
`steps`, gradient clipping, bf16 autocast on CUDA, optional torch.compile, DDP when the
world size is above 1 (trainer/distributed.py). The settings and their defaults are
TrainConfig's (trainer/config.py).

Classes: the head has one output per class name the data carries (a Flight stream's
schema metadata, a packed folder's classes.json: packer.contract.classes), and the
checkpoint stores the names. A `num_classes` the names contradict, or a resume on data
whose names are not the checkpoint's, is a ConfigMismatch (`navit train` exits 2 with
one line). Data that names no classes gets `num_classes`, else 1000. The count is never
inferred from the first batches: a class missing from them would be silently cut off;
a label >= num_classes stops training with an error naming it.

Files in `ckpt_dir` (rank 0 writes them): `checkpoint.pt` (trainer/checkpoint.py), every
`ckpt_every` steps and at the end, and `metrics.jsonl` (trainer/metrics.py). `resume`
continues from the checkpoint's data cursor; on CPU the losses then equal those of an
uninterrupted run exactly (seeded init, no dropout, the same batches from the cursor).
The LR schedule always spans `steps`; `stop_at` ends a run early (e.g. a preemptible
time slot) without changing the schedule.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from packer.contract.classes import UnknownClasses, label_mapping
from packer.contract.cursor import Cursor
from packer.contract.schema import PackedBatch
from trainer.checkpoint import (
    load_checkpoint,
    restore_model,
    restore_training,
    resume_cursor,
    save_on_main,
)
from trainer.config import CHECKPOINT_NAME, METRICS_NAME, ConfigMismatch, TrainConfig
from trainer.data import (
    PackedFolder,
    is_flight_source,
    iter_batches,
    source_class_names,
    to_device,
)
from trainer.distributed import autocast, pick_device, process_group, wrap_model
from trainer.evaluate import evaluate
from trainer.metrics import MetricsLog, step_record, throughput
from trainer.model import MODEL_INPUTS, NaViT, build_model
from trainer.progress import StepProgress
from trainer.report import StepReporter

DEFAULT_NUM_CLASSES = 1000


def train(config: TrainConfig, token: str | None = None) -> list[dict[str, Any]]:
    """Train; return this run's metric records (its lines of metrics.jsonl).

    `token` is the bearer token of a Flight source (`navit train` reads it with
    `read_token(config.token_file)`); a folder source needs none.
    """
    rank, world_size = config.resolved_rank()
    device = pick_device(config.device)
    ckpt_path = Path(config.ckpt_dir) / CHECKPOINT_NAME
    checkpoint = load_checkpoint(ckpt_path) if config.resume else None
    start_step = checkpoint["step"] if checkpoint else 0
    cursor = resume_cursor(checkpoint, rank, world_size) if checkpoint else Cursor(rank, world_size)

    with process_group(rank, world_size, device):
        # The data comes first: the model's patch size is the data's.
        stream, patch_size, first_wait = _open_stream(config, cursor, token)
        class_names = _class_names(config, cursor, token, checkpoint)
        _check_eval_source(config, cursor, class_names)
        model = _build(config, checkpoint, patch_size, class_names, device)
        log = MetricsLog(
            Path(config.ckpt_dir) / METRICS_NAME if rank == 0 else None,
            start_step if checkpoint else None,
        )
        last_step = min(config.steps, config.stop_at or config.steps)
        reporter = StepReporter(config.source, token, rank, world_size)
        show = config.progress and rank == 0
        bar = StepProgress(config.steps, start_step, enabled=show)  # plain lines off a tty
        completed = start_step
        for step in range(start_step + 1, last_step + 1):
            # The first step also counts the wait for the first batch, fetched above.
            step_begin, first_wait = time.perf_counter() - first_wait, 0.0
            item = next(stream, None)
            data_wait = time.perf_counter() - step_begin
            if item is None:  # a finite stream ended early
                warnings.warn(f"{config.source}: data ended after step {completed}", stacklevel=2)
                break
            cursor, batch = item  # the cursor after this batch: where a resume continues
            loss, correct, lr = model.step(batch, device, config.grad_clip)
            completed = step
            if step % config.log_every == 0 or step == last_step:
                loss_value = float(loss.item())  # syncs the device, so only on logged steps
                step_s = time.perf_counter() - step_begin
                record = step_record(step, cursor, batch, loss_value, int(correct), lr)
                record |= throughput(batch, step_s, data_wait)
                log.write(record)
                reporter.report(record)  # the service shows each rank's data wait
                bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{record['accuracy']:.3f}")
            bar.update(1)
            if step != last_step and _every(step, config.ckpt_every):
                model.save(ckpt_path, step, config.steps, cursor)
            if step != last_step and config.eval_source and _every(step, config.eval_every):
                log.write(model.evaluate(config.eval_source, step, rank, world_size, device))
        bar.close()
        reporter.close()
        stream.close()  # stops the prefetch thread
        model.save(ckpt_path, completed, config.steps, cursor)
        if config.eval_source:
            log.write(model.evaluate(config.eval_source, completed, rank, world_size, device))
        log.close()
    return log.records


# ---------------------------------------------------------------------------------------
# The data and the model of a run


def _open_stream(
    config: TrainConfig, cursor: Cursor, token: str | None
) -> tuple[Generator[tuple[Cursor, PackedBatch], None, None], int, float]:
    """(the stream from `cursor` on, its patch size, seconds waited for its first batch)."""
    waited = time.perf_counter()
    batches = iter_batches(config.source, cursor, token=token, prefetch=config.prefetch)
    first = next(batches, None)
    if first is None:
        raise RuntimeError(f"{config.source}: no batches to train on")
    first_wait = time.perf_counter() - waited
    return _chain_first(first, batches), first[1].patch_size, first_wait


@dataclass
class _Model:
    """The model of a run with its optimizer and schedule; `step_model` is what the
    forward runs through (DDP-wrapped and compiled where asked)."""

    navit: NaViT
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    class_names: list[str] | None  # what the head's outputs mean, saved with the weights

    def step(
        self, batch: PackedBatch, device: torch.device, grad_clip: float
    ) -> tuple[torch.Tensor, torch.Tensor | int, float]:
        """One optimizer step on `batch`: (loss, correct images, the step's learning rate)."""
        check_labels(batch, self.navit.config.num_classes)
        tensors = to_device(batch, device)
        labels = tensors.pop("labels")
        with autocast(device):
            logits = self.step_model(**{name: tensors[name] for name in MODEL_INPUTS})
        loss, correct = classification_loss(logits, labels, int((batch.labels >= 0).sum()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(self.navit.parameters(), grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return loss, correct, lr

    def evaluate(
        self, source: str, step: int, rank: int, world_size: int, device: torch.device
    ) -> dict[str, Any]:
        """One pass over `source`, its labels mapped onto this head's class names."""
        return evaluate(self.navit, source, step, rank, world_size, device, self.class_names)

    def save(self, path: Path, step: int, total_steps: int, cursor: Cursor) -> None:
        save_on_main(
            path,
            self.navit,
            self.optimizer,
            self.scheduler,
            step,
            total_steps,
            cursor,
            self.class_names,
        )


def _class_names(
    config: TrainConfig, cursor: Cursor, token: str | None, checkpoint: dict[str, Any] | None
) -> list[str] | None:
    """The class names of the run's head: the data's (packer.contract.classes), checked
    against --num-classes and a resumed checkpoint's; ConfigMismatch on a contradiction."""
    names = source_class_names(config.source, cursor, token)
    if checkpoint is not None:
        stored = checkpoint.get("class_names")
        if names is not None and stored is not None and names != stored:
            raise ConfigMismatch(
                f"the data's classes ({_shown(names)}) are not the checkpoint's "
                f"({_shown(stored)}): resume on the data the run started with"
            )
        return stored if stored is not None else names
    if names and config.num_classes is not None and config.num_classes != len(names):
        raise ConfigMismatch(
            f"--num-classes {config.num_classes} disagrees with the {len(names)} classes the "
            f"data names ({_shown(names)}); leave --num-classes out"
        )
    if names == []:
        warnings.warn(f"{config.source}: the data names no classes", stacklevel=2)
    return names


def _check_eval_source(config: TrainConfig, cursor: Cursor, class_names: list[str] | None) -> None:
    """Refuse an --eval-source that cannot be scored before the first step (not after the
    last): not a packed folder or stream, or naming a class the head does not know."""
    source = config.eval_source
    if source is None:
        return
    if not is_flight_source(source):
        try:
            PackedFolder(Path(source))
        except (OSError, ValueError) as error:
            raise ConfigMismatch(
                f"--eval-source {source}: {error} (an image folder, WebDataset or Parquet "
                "source is packed by navit train and navit pretrain; where only the trainer "
                "is installed, pack it with navit pack first)"
            ) from None
    names = source_class_names(source, Cursor(cursor.rank, cursor.world_size))
    if names is not None and class_names is not None:
        try:
            label_mapping(names, class_names)
        except UnknownClasses as error:
            raise ConfigMismatch(f"--eval-source {source}: {error}") from None


def _shown(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def _build(
    config: TrainConfig,
    checkpoint: dict[str, Any] | None,
    patch_size: int,
    class_names: list[str] | None,
    device: torch.device,
) -> _Model:
    """A fresh model (seeded), or the checkpoint's with its optimizer and schedule."""
    torch.manual_seed(config.seed)
    if checkpoint:
        navit = restore_model(checkpoint, patch_size)
    else:
        num_classes = len(class_names) if class_names else config.num_classes
        navit = build_model(
            config.model,
            num_classes or DEFAULT_NUM_CLASSES,
            patch_size=patch_size,
            pos_mode=config.pos_mode,
            attn_impl=config.attn_impl,
        )
    navit.to(device)
    optimizer = make_optimizer(navit, config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup_steps, config.steps)
    )
    if checkpoint:
        restore_training(checkpoint, optimizer, scheduler, config.steps)
    step_model = wrap_model(navit, device, config.compile)
    return _Model(navit, step_model, optimizer, scheduler, class_names)


# ---------------------------------------------------------------------------------------
# Loss, schedule, optimizer, labels


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


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """LambdaLR multiplier at optimizer step `step` (0-based): linear warmup, then cosine.

    warmup 100, total 1000: step 49 -> 0.5, step 99 -> 1.0, step 550 -> 0.5, 1000 -> 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW decaying matrices only: not norms, biases, positional tables, pooling query."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        keep = parameter.ndim < 2 or name.startswith("positions.") or name == "head.query"
        (no_decay if keep else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def check_labels(batch: PackedBatch, num_classes: int) -> None:
    if batch.labels.size and int(batch.labels.max()) >= num_classes:
        raise ValueError(
            f"label {int(batch.labels.max())} >= num_classes={num_classes}; "
            "the data labels more classes than it names"
        )


def _every(step: int, period: int) -> bool:
    return period > 0 and step % period == 0


def _chain_first(
    first: tuple[Cursor, PackedBatch], rest: Generator[tuple[Cursor, PackedBatch], None, None]
) -> Generator[tuple[Cursor, PackedBatch], None, None]:
    try:
        yield first
        yield from rest
    finally:
        rest.close()  # closing the chain stops the prefetch thread behind `rest`
