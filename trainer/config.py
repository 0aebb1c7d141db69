"""`TrainConfig`: the one owner of the trainer's settings and their defaults.

`navit train` derives its flags from these fields (the field name with dashes, e.g.
`warmup_steps` -> `--warmup-steps`; the help text is the field's `help` metadata, or
for a switch that turns a True default off, its `switch_help`), and
`navit pretrain` derives its trainer flags from the same fields, so a default is written
once. A bad value is a `ValueError` naming the field, raised when the config is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

# Kept here, not in trainer.model, so that a launcher validating a config (navit pretrain)
# needs no torch. trainer.model builds its layers from these.
PosMode = Literal["absolute", "fractional"]
AttnImpl = Literal["auto", "sdpa", "flex"]
# Named sizes: width, depth, heads (ViT-Ti/S/B/L with 16-pixel patches; tiny for tests).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"width": 64, "depth": 2, "heads": 2},
    "s16": {"width": 384, "depth": 12, "heads": 6},
    "b16": {"width": 768, "depth": 12, "heads": 12},
    "l16": {"width": 1024, "depth": 24, "heads": 16},
}


# What a trainer writes in its `ckpt_dir` (rank 0): named here, without torch, so the
# launch layer finds them by the same names (trainer/checkpoint.py, trainer/metrics.py).
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


class ConfigMismatch(ValueError):
    """What was asked for does not fit the data or the checkpoint (`navit train` exits 2
    with this one line): a --num-classes the data's class names contradict, a resume on
    data whose classes are not the checkpoint's."""


def _option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    """What one trainer rank trains on, how, and where it writes."""

    source: str = _option(None, "grpc://HOST:PORT (the packer service) or a packed folder")
    steps: int = _option(None, "optimizer steps; the LR schedule spans them")
    model: str = _option("tiny", "model size", choices=tuple(sorted(MODEL_SIZES)))
    ckpt_dir: str = _option(
        "runs/train", f"folder for {CHECKPOINT_NAME} and {METRICS_NAME}", flag="--ckpt"
    )
    ckpt_every: int = _option(1000, "checkpoint every N steps (0: at the end only)")
    stop_at: int | None = _option(None, "stop after this step (schedule unchanged)")
    rank: int | None = _option(None, "this process's rank (default: env RANK or 0)")
    world_size: int | None = _option(None, "ranks (default: env WORLD_SIZE or 1)")
    resume: bool = _option(False, "continue from the checkpoint in the ckpt folder")
    lr: float = _option(1e-3, "peak learning rate")
    warmup_steps: int = _option(100, "linear warmup steps before the cosine decay")
    weight_decay: float = _option(0.05, "AdamW weight decay")
    grad_clip: float = _option(1.0, "max gradient norm (0: off)")
    compile: bool = _option(False, "torch.compile the model")
    num_classes: int | None = _option(
        None,
        "classes of the head (default: as many as the data names: the stream's class names "
        "or the folder's classes.json; 1000 when it names none); a number the data "
        "contradicts is refused",
    )
    token_file: str | None = _option(
        None, "file holding the bearer token (default: env NAVIT_TOKEN)"
    )
    eval_source: str | None = _option(
        None,
        "data to evaluate on: a packed folder, or an image folder, WebDataset or Parquet "
        "source (packed once at --eval-resolution when training starts)",
    )
    eval_resolution: int | None = _option(
        None,
        "resolution an unpacked --eval-source is packed at (default: navit train, the "
        "largest square image one sequence of the training data holds, patch * "
        "floor(sqrt(seq_len)); navit pretrain, the packing config's max_res)",
    )
    eval_every: int = _option(0, "evaluate every N steps (0: at the end only)")
    seed: int = _option(0, "seed of the model init")
    log_every: int = _option(1, "write a metrics line every N steps")
    progress: bool = _option(
        True,
        "show progress: a bar on a terminal, else a plain line every 10 s",
        flag="--no-progress",
        switch_help="show no progress (by default a bar on a terminal, else a plain line "
        "every 10 s)",
    )
    device: str | None = _option(None, "cpu, cuda, cuda:1 (default: cuda if available)")
    prefetch: int = _option(2, "batches read ahead by a background thread")
    pos_mode: PosMode = _option("fractional", "position embedding of the patch grid")
    attn_impl: AttnImpl = _option("auto", "attention kernel (auto: flex on CUDA, else sdpa)")

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source: required (grpc://HOST:PORT or a packed folder)")
        for name in ("steps", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("ckpt_every", "warmup_steps", "eval_every", "prefetch", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
        for name in ("stop_at", "num_classes", "world_size", "eval_resolution"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.rank is not None and self.rank < 0:
            raise ValueError(f"rank: must be non-negative, got {self.rank}")
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model: unknown {self.model!r}; choose from {sorted(MODEL_SIZES)}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            # `not value >= 0` also catches NaN.
            if not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr: must be above 0")
        for name, allowed in (("pos_mode", get_args(PosMode)), ("attn_impl", get_args(AttnImpl))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {allowed}, got {getattr(self, name)!r}")

    def resolved_rank(self) -> tuple[int, int]:
        """(rank, world_size) from the fields, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
        rank = int(os.environ.get("RANK", 0)) if self.rank is None else self.rank
        world = int(os.environ.get("WORLD_SIZE", 1)) if self.world_size is None else self.world_size
        if not 0 <= rank < world:
            raise ValueError(f"rank: must lie in [0, world_size={world}), got {rank}")
        return rank, world

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)
