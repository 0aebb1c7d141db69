"""`navit simulate`: the packing stats a config would give, from the index alone.

Runs the planner without decoding a pixel, so its prediction equals what `navit pack`
delivers whenever no image fails to decode (the same planner decides both).
"""

from __future__ import annotations

import time

import pyarrow as pa

from packer.index import header_rejects
from packer.plan import ConfigHistory, EpochPlanner
from packer.stats import PackingStats


def simulate(index: pa.Table, history: ConfigHistory, epochs: int = 1) -> PackingStats:
    stats = PackingStats()
    header_errors = [reason for _, reason in header_rejects(index)]
    started = time.perf_counter()
    for epoch in range(epochs):
        stats.add_rejected(header_errors)
        for plan in EpochPlanner(index, history, epoch).iter_batches():
            stats.add_plan(plan)
    stats.elapsed_s = time.perf_counter() - started
    return stats
