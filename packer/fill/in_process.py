"""Packing in this process, without Ray: for sets small enough not to need a cluster.

Evaluation packs its images at each resolution it scores (`fixed_resolution_config` in
packer.config: min_res = max_res = r, no token drop), and `navit pretrain` packs its
held-out split once. The batches come from the same planner and fill as `navit pack`'s
and the service's (packer.plan, packer.fill).

    config = fixed_resolution_config(128, patch_size=16)      # seq_len 256, 64 tokens max
    for result in pack_in_process(val_index, config): ...      # FillResult per batch
    write_packed_folder(val_index, config, "runs/pretrain/val")  # a folder the trainer reads
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from packer.config import PackingConfig
from packer.contract.classes import write_class_names
from packer.contract.packed_folder import epoch_folder, remove_batch_files
from packer.fill.batch import FillResult, fill_and_write, fill_batch
from packer.index.image_index import ImageIndex
from packer.index.table import index_class_names
from packer.plan.epoch import plan_epoch
from packer.plan.history import ConfigHistory
from packer.plan.stats import PackingStats


def pack_in_process(
    index: ImageIndex, config: PackingConfig, epoch: int = 0
) -> Iterator[FillResult]:
    """Plan and fill epoch `epoch` of `index` under `config`, batch by batch, no Ray."""
    planned = plan_epoch(index, ConfigHistory.start(config), epoch)
    for plan in planned.planner.iter_plans():
        yield fill_batch(plan)


def write_packed_folder(
    index: ImageIndex, config: PackingConfig, out_dir: str | Path
) -> PackingStats:
    """Pack epoch 0 of `index` into out_dir/epoch-000/batch-*.arrow; the stats of the pack.

    Batch files of an earlier pack in out_dir/epoch-000 are removed first, so the folder
    holds exactly this pack's batches; out_dir/classes.json names the index's classes.
    """
    out = Path(out_dir)
    remove_batch_files(epoch_folder(out, 0))
    write_class_names(out, index_class_names(index))
    planned = plan_epoch(index, ConfigHistory.start(config), 0)
    stats = PackingStats()
    stats.add_rejected([r.reason for r in planned.rejected])
    for plan in planned.planner.iter_plans():
        stats.merge(fill_and_write(plan, out).stats)
    return stats
