"""The epoch's tail for one rank: its share of the tail zone's sequences as a BatchLayout.

packer.contract.rank_layout decides which sequences of the zone (the last one or two
rounds of global batches, concatenated in global order) each rank's last batches hold;
this cuts them out of the zone's planned layouts. For zone batches holding sequences
[a0, a1, a2] and [b0, b1] and a share [1, 4), the rank's batch holds a1, a2, b0 in that
order, each with its images in slot order.
"""

from __future__ import annotations

import numpy as np

from packer.contract.rank_layout import TailShare
from packer.plan.batch_plan import BatchLayout


def tail_layout(zone: list[BatchLayout], share: TailShare, global_batch: int) -> BatchLayout:
    """The BatchLayout of `share` (at least one sequence) over the zone's planned
    batches, all of one config version, as the rank's batch `global_batch`. Cut from the
    layouts, so the caller reads the index once for the share's images, not for the
    whole zone."""
    offsets = np.cumsum([0] + [layout.num_sequences for layout in zone])
    sequence = np.concatenate(
        [
            layout.sequence.astype(np.int64) + offset
            for layout, offset in zip(zone, offsets, strict=False)
        ]
    )
    picked = np.flatnonzero((sequence >= share.start) & (sequence < share.stop))

    def take(name: str) -> np.ndarray:
        return np.concatenate([getattr(layout, name) for layout in zone])[picked]

    first = zone[0]
    return BatchLayout(
        epoch=first.epoch,
        global_batch=global_batch,
        config_version=first.config_version,
        config=first.config,
        num_sequences=share.stop - share.start,
        sequence=(sequence[picked] - share.start).astype(np.int32),
        rows=take("rows"),
        key=take("key"),
        grid_h=take("grid_h"),
        grid_w=take("grid_w"),
        num_kept=take("num_kept"),
    )
