"""One packed batch as the planner decides it, before any pixel is read.

- `BatchLayout`: which rows of the index table go to which sequence, and their draws
  (what the planner keeps and regenerates; simulate and the benches count these);
- `BatchPlan`: the layout with each image's id, location and label read from the index:
  everything the fill step needs (packer.fill), without the index.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from packer.config import PackingConfig
from packer.index.image_index import ImageIndex
from packer.plan.history import ConfigVersion


@dataclass(frozen=True)
class _PlannedBatch:
    """What a layout and its plan share: the batch's place and config, and each image's
    sequence and draws.

    Per-image arrays are flat over the batch in row order: `sequence[i]` is the row
    (0..num_sequences-1) image i lands in, and images of one sequence are in slot order.
    """

    epoch: int
    global_batch: int  # the batch's index in the epoch (rank striding: contract.cursor)
    config_version: int
    config: PackingConfig
    num_sequences: int  # rows of the Arrow batch, every one holding an image (but a filler)
    sequence: np.ndarray  # [N] int32
    key: np.ndarray  # [N] uint64
    grid_h: np.ndarray  # [N] int64
    grid_w: np.ndarray  # [N] int64
    num_kept: np.ndarray  # [N] int64

    @property
    def num_images(self) -> int:
        return len(self.sequence)

    @property
    def real_tokens(self) -> int:
        return int(self.num_kept.sum())


@dataclass(frozen=True)
class BatchLayout(_PlannedBatch):
    """One planned batch: which table rows go to which sequence, and their draws."""

    rows: np.ndarray  # [N] int64, the index table's rows


@dataclass(frozen=True)
class BatchPlan(_PlannedBatch):
    """Everything the fill step needs to build one packed batch, without the index: the
    layout with each image's id, location and label."""

    image_ids: list[str]
    uri: list[str]
    offset: np.ndarray  # [N] int64
    length: np.ndarray  # [N] int64
    source_row: np.ndarray  # [N] int64, the Parquet row (-1: not Parquet)
    label: np.ndarray  # [N] int64

    @classmethod
    def located(cls, layout: BatchLayout, index: ImageIndex) -> BatchPlan:
        """The layout with its images' ids, locations and labels read from `index`."""
        where = index.locations(layout.rows)
        shared = {f.name: getattr(layout, f.name) for f in fields(_PlannedBatch)}
        return cls(
            **shared,
            image_ids=where.image_ids,
            uri=where.uri,
            offset=where.offset,
            length=where.length,
            source_row=where.source_row,
            label=where.label,
        )

    @classmethod
    def empty(cls, epoch: int, global_batch: int, version: ConfigVersion) -> BatchPlan:
        """A filler batch of one all-padding sequence: what a rank gets in the epoch's
        tail when there are fewer sequences left than ranks (packer.contract.rank_layout)."""
        zeros = np.zeros(0, np.int64)
        return cls(
            epoch=epoch,
            global_batch=global_batch,
            config_version=version.version,
            config=version.config,
            num_sequences=1,  # a filler: one all-padding sequence
            sequence=np.zeros(0, np.int32),
            image_ids=[],
            uri=[],
            offset=zeros,
            length=zeros,
            source_row=zeros,
            label=zeros,
            key=np.zeros(0, np.uint64),
            grid_h=zeros,
            grid_w=zeros,
            num_kept=zeros,
        )
