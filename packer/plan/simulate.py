"""`navit simulate`: the packing stats a config would give, from the index alone.

Runs the planner without decoding a pixel. Its prediction equals what `navit pack`
delivers when no planned image fails to decode: the same planner decides both, and the
images an earlier pack found undecodable are left out of both (packer.index.reject_ledger:
simulate applies every entry the ledger knows, as the next pack will).
"""

from __future__ import annotations

import time

from packer.index.image_index import ImageIndex
from packer.index.reject_ledger import RejectLedger
from packer.index.table import index_skipped
from packer.plan.epoch import plan_epoch
from packer.plan.history import ConfigHistory
from packer.plan.stats import PackingStats


def simulate(
    index: ImageIndex,
    history: ConfigHistory,
    epochs: int = 1,
    ledger: RejectLedger | None = None,
) -> PackingStats:
    """Predicted stats of packing `epochs` epochs; `ledger` defaults to the index's own
    (RejectLedger.for_index), whose every entry is applied."""
    ledger = ledger if ledger is not None else RejectLedger.for_index(index)
    stats = PackingStats()
    stats.add_skipped(index_skipped(index))
    started = time.perf_counter()
    for epoch in range(epochs):
        planned = plan_epoch(index, history, epoch, ledger)  # every known failure left out
        stats.add_rejected([r.reason for r in planned.rejected])
        for layout in planned.planner.iter_layouts():  # no image's location is read
            stats.add_plan(layout)
    stats.elapsed_s = time.perf_counter() - started
    return stats
