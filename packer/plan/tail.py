"""The epoch's tail for one rank: its share of the tail zone's sequences as a BatchPlan.

packer.contract.rank_layout decides which sequences of the zone (the last one or two
rounds of global batches, concatenated in global order) each rank's last batches hold;
this cuts them out of the zone's planned batches. For zone batches holding sequences
[a0, a1, a2] and [b0, b1] and a share [1, 4), the rank's batch holds a1, a2, b0 in that
order, each with its images in slot order.
"""

from __future__ import annotations

import numpy as np

from packer.contract.rank_layout import TailShare
from packer.plan.batch_plan import BatchPlan


def tail_plan(zone: list[BatchPlan], share: TailShare, global_batch: int) -> BatchPlan:
    """The BatchPlan of `share` (at least one sequence) over the zone's planned batches,
    all of one config version, as the rank's batch `global_batch`."""
    offsets = np.cumsum([0] + [plan.num_sequences for plan in zone])
    sequence = np.concatenate(
        [
            plan.sequence.astype(np.int64) + offset
            for plan, offset in zip(zone, offsets, strict=False)
        ]
    )
    picked = np.flatnonzero((sequence >= share.start) & (sequence < share.stop))

    def take(name: str) -> np.ndarray:
        return np.concatenate([getattr(plan, name) for plan in zone])[picked]

    def take_list(name: str) -> list:
        values = [value for plan in zone for value in getattr(plan, name)]
        return [values[i] for i in picked.tolist()]

    first = zone[0]
    return BatchPlan(
        epoch=first.epoch,
        global_batch=global_batch,
        config_version=first.config_version,
        config=first.config,
        num_sequences=share.stop - share.start,
        sequence=(sequence[picked] - share.start).astype(np.int32),
        image_ids=take_list("image_ids"),
        uri=take_list("uri"),
        offset=take("offset"),
        length=take("length"),
        source_row=take("source_row"),
        label=take("label"),
        key=take("key"),
        grid_h=take("grid_h"),
        grid_w=take("grid_w"),
        num_kept=take("num_kept"),
    )
