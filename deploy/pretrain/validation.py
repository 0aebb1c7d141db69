"""The run's validation split: held out of the service's streams, packed once for the
trainers' evaluation.

`--val-fraction F --val-seed S` holds out the images packer.plan.split chooses for (S, image
id); the service gets the same pair (`navit serve --holdout-fraction F --holdout-seed
S`), so it never streams them. They are packed here, once, at the packing config's
max_res (every image at that one resolution, aspect kept, no token drop:
packer.fill.in_process) into run_dir/val, which the trainers score every eval_every
steps. `navit eval ... --val-fraction F --val-seed S` scores the same images later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.pretrain.options import PretrainOptions
from packer.index.image_index import ImageIndex

VAL_DIR = "val"


@dataclass(frozen=True)
class ValidationSet:
    """The packed held-out split of a run."""

    folder: Path  # run_dir/val: a packed folder (epoch-000/batch-*.arrow)
    held_out: int  # images the split holds out
    resolution: int  # the one resolution they were packed at
    stats: dict[str, Any]  # PackingStats of the pack

    @property
    def packed(self) -> int:
        """Held-out images that decoded: the ones the trainers score."""
        return int(self.stats["images_packed"])


def pack_validation(index: ImageIndex, options: PretrainOptions, run_dir: Path) -> ValidationSet:
    """Split `index` as the service will and pack the held-out part into run_dir/val."""
    from packer.config import fixed_resolution_config
    from packer.fill.in_process import write_packed_folder
    from packer.plan.split import split_index

    _, val = split_index(index, options.val_fraction, options.val_seed)
    base = options.packing_config()
    config = fixed_resolution_config(
        base.max_res, base.patch_size, base.res_mode, base.seq_len, base.batch_size, base.seed
    )
    folder = run_dir / VAL_DIR
    stats = write_packed_folder(val, config, folder).to_dict()
    return ValidationSet(folder, val.num_rows, base.max_res, stats)
