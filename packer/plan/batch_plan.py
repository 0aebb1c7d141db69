"""One packed batch as the planner decides it, before any pixel is read.

- `BatchLayout`: which rows of the index table go to which sequence, and their draws
  (what the planner keeps and regenerates; simulate and the benches count these);
- `BatchPlan`: the layout with each image's id, location and label read from the index:
  everything the fill step needs (packer.fill), without the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packer.config import PackingConfig
from packer.index.image_index import ImageIndex
from packer.plan.history import ConfigVersion


@dataclass(frozen=True)
class BatchLayout:
    """One planned batch: which table rows go to which sequence, and their draws.

    Per-image arrays are flat over the batch in row order: `sequence[i]` is the row
    (0..num_sequences-1) image i lands in, and images of one sequence are in slot order.
    """

    epoch: int
    global_batch: int  # the batch's index in the epoch (rank striding: contract.cursor)
    config_version: int
    config: PackingConfig
    num_sequences: int  # rows of the Arrow batch, every one holding an image (but a filler)
    sequence: np.ndarray  # [N] int32
    rows: np.ndarray  # [N] int64, the index table's rows
    key: np.ndarray  # [N] uint64
    grid_h: np.ndarray  # [N] int64
    grid_w: np.ndarray  # [N] int64
    num_kept: np.ndarray  # [N] int64

    @property
    def num_images(self) -> int:
        return len(self.rows)

    @property
    def real_tokens(self) -> int:
        return int(self.num_kept.sum())


@dataclass(frozen=True)
class BatchPlan:
    """Everything the fill step needs to build one packed batch, without the index.

    Per-image arrays are flat over the batch in row order: `sequence[i]` is the row
    (0..num_sequences-1) image i lands in, and images of one sequence are in slot order.
    """

    epoch: int
    global_batch: int  # the batch's index in the epoch (rank striding: contract.cursor)
    config_version: int
    config: PackingConfig
    num_sequences: int  # rows of the Arrow batch, every one holding an image (but a filler)
    sequence: np.ndarray  # [N] int32
    image_ids: list[str]
    uri: list[str]
    offset: np.ndarray  # [N] int64
    length: np.ndarray  # [N] int64
    source_row: np.ndarray  # [N] int64, the Parquet row (-1: not Parquet)
    label: np.ndarray  # [N] int64
    key: np.ndarray  # [N] uint64
    grid_h: np.ndarray  # [N] int64
    grid_w: np.ndarray  # [N] int64
    num_kept: np.ndarray  # [N] int64

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def real_tokens(self) -> int:
        return int(self.num_kept.sum())

    @classmethod
    def located(cls, layout: BatchLayout, index: ImageIndex) -> BatchPlan:
        """The layout with its images' ids, locations and labels read from `index`."""
        where = index.locations(layout.rows)
        return cls(
            epoch=layout.epoch,
            global_batch=layout.global_batch,
            config_version=layout.config_version,
            config=layout.config,
            num_sequences=layout.num_sequences,
            sequence=layout.sequence,
            image_ids=where.image_ids,
            uri=where.uri,
            offset=where.offset,
            length=where.length,
            source_row=where.source_row,
            label=where.label,
            key=layout.key,
            grid_h=layout.grid_h,
            grid_w=layout.grid_w,
            num_kept=layout.num_kept,
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
