"""Packing at one fixed resolution, in this process: what evaluation at a resolution needs.

Training draws each image's resolution from [min_res, max_res]; evaluation at r asks
every image for r: min_res = max_res = r, aspect kept (`res_mode` says how, as in
training: `area` gives about (r/p)^2 tokens, `side` makes the longer side r/p patches),
no token drop. The batches come from the same planner and fill as `navit pack`'s and the
service's (packer.plan, packer.fill), here without Ray: an evaluation set is small.

    config = fixed_resolution_config(128, patch_size=16)      # seq_len 256, 64 tokens max
    for result in pack_in_process(val_index, config): ...      # FillResult per batch
    write_packed_folder(val_index, config, "runs/pretrain/val")  # a folder the trainer reads
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from packer.batch_files import batch_path, write_batch_file
from packer.config import ConfigError, PackingConfig, ResolutionMode
from packer.contract.schema import to_record_batch
from packer.fill import FillResult, fill_batch
from packer.plan import ConfigHistory, EpochPlanner
from packer.stats import PackingStats

# Sequences of at least this many tokens: several small images share one, as in training.
MIN_SEQ_LEN = 256


def fixed_resolution_config(
    resolution: int,
    patch_size: int,
    res_mode: ResolutionMode = "area",
    seq_len: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> PackingConfig:
    """Every image at `resolution`, aspect kept, nothing dropped.

    `seq_len` defaults to enough for the largest image: max(256, (r // p)^2), so r = 384
    at p = 16 packs sequences of 576 tokens. A resolution below the patch size is a
    ConfigError naming `resolution`.
    """
    if not isinstance(resolution, int) or resolution < patch_size:
        raise ConfigError(
            "resolution",
            f"must be an integer of at least patch_size={patch_size}, got {resolution!r}",
        )
    largest = (resolution // patch_size) ** 2
    return PackingConfig(
        patch_size=patch_size,
        seq_len=max(seq_len or MIN_SEQ_LEN, largest),
        batch_size=batch_size,
        min_res=resolution,
        max_res=resolution,
        res_mode=res_mode,
        token_drop="none",
        seed=seed,
    )


def pack_in_process(index: pa.Table, config: PackingConfig, epoch: int = 0) -> Iterator[FillResult]:
    """Plan and fill epoch `epoch` of `index` under `config`, batch by batch, no Ray."""
    planner = EpochPlanner(index, ConfigHistory.start(config), epoch)
    for plan in planner.iter_batches():
        yield fill_batch(plan)


def write_packed_folder(
    index: pa.Table, config: PackingConfig, out_dir: str | Path
) -> PackingStats:
    """Pack epoch 0 of `index` into out_dir/epoch-000/batch-*.arrow; the stats of the pack.

    Files of an earlier pack in out_dir/epoch-000 are removed first, so the folder holds
    exactly this pack's batches.
    """
    out = Path(out_dir)
    epoch_dir = batch_path(out, 0, 0).parent
    epoch_dir.mkdir(parents=True, exist_ok=True)
    for old in epoch_dir.glob("batch-*.arrow"):
        old.unlink()
    stats = PackingStats()
    planner = EpochPlanner(index, ConfigHistory.start(config), 0)
    for plan in planner.iter_batches():
        result = fill_batch(plan)
        write_batch_file(batch_path(out, 0, plan.batch), to_record_batch(result.batch))
        notes = [note.kind for note in result.notes]
        stats.add_filled(plan, result.batch, result.rejected_reasons, notes)
    return stats
