"""A tiny NaViT trained on `navit sample-data` images, for the tests of `navit eval`.

320 sample images; a quarter held out (packer.plan.split, seed 0); the rest packed once at
resolutions 32-64 px (patch 16) and trained for 120 steps on the CPU: a few seconds,
and enough that the held-out images score well above chance (4 classes) at 48-64 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from packer.config import PackingConfig
from packer.fill.in_process import write_packed_folder
from packer.index.cache import load_index
from packer.plan.split import split_index
from packer.sample_data import write_sample_dataset
from trainer.config import TrainConfig
from trainer.train import train

VAL_FRACTION = 0.25
VAL_SEED = 0
TRAIN_RES = (32, 64)  # min_res, max_res of the training pack
PATCH = 16


@dataclass(frozen=True)
class SampleModel:
    data: Path  # the image folder
    checkpoint: Path
    index: pa.Table  # the whole data set
    val: pa.Table  # its held-out part, never trained on


def train_sample_model(root: Path, images: int = 320, steps: int = 120) -> SampleModel:
    data = root / "data"
    write_sample_dataset(data, images, seed=0)
    index = load_index(str(data))
    train_part, val = split_index(index, VAL_FRACTION, VAL_SEED)
    low, high = TRAIN_RES
    config = PackingConfig(patch_size=PATCH, seq_len=64, batch_size=8, min_res=low, max_res=high)
    write_packed_folder(train_part, config, root / "train")
    run = TrainConfig(
        source=str(root / "train"),
        steps=steps,
        ckpt_dir=str(root / "run"),
        ckpt_every=0,
        num_classes=4,
        lr=3e-3,
        warmup_steps=5,
        log_every=steps,
        progress=False,
        device="cpu",
    )
    train(run)
    return SampleModel(data, root / "run" / "checkpoint.pt", index, val)
