"""An evaluation source of any kind, as the packed folder a trainer scores.

`navit train --eval-source` and `navit pretrain --eval-source` take a packed folder, or an
image folder, WebDataset or Parquet source; the launch layer packs an unpacked one here
once, before training starts, at one resolution (packer.config.fixed_resolution_config:
every image at r, aspect kept, no token drop; the same planner and fill as training's),
so the trainer only ever reads packed batches. A source that is neither is refused before
the first step, never after the last.
"""

from __future__ import annotations

import math
from pathlib import Path

from packer.contract.packed_folder import is_packed_folder


def is_unpacked(source: str) -> bool:
    """Whether `source` needs packing first: not a Flight stream, not a packed folder."""
    from trainer.data import is_flight_source

    return not is_flight_source(source) and not is_packed_folder(source)


def default_resolution(patch_size: int, seq_len: int) -> int:
    """The largest square image one sequence holds: 16 * floor(sqrt(256)) = 256 px."""
    return patch_size * max(1, math.isqrt(seq_len))


def pack_eval_source(
    source: str, out: Path, resolution: int, patch_size: int, seq_len: int | None = None
) -> int:
    """Pack every image of `source` at `resolution` into the folder `out`; the images
    packed. A wrong path is a DatasetError, a resolution below the patch a ConfigError
    (one line each in the CLI)."""
    from packer.config import fixed_resolution_config
    from packer.fill.in_process import write_packed_folder
    from packer.index.cache import load_index

    index = load_index(source)
    config = fixed_resolution_config(resolution, patch_size, seq_len=seq_len)
    return write_packed_folder(index, config, out).images_packed
