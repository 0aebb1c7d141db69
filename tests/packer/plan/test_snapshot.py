"""Planner snapshots: a batch reached through a snapshot is the batch planned straight
through, and reaching it keeps memory flat."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.config import PackingConfig
from packer.plan.batch_plan import BatchLayout
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.plan.snapshot import PlannerSnapshot, SnapshotLog
from packer.synthetic import imagenet_like_index

SMALL = PackingConfig(seq_len=256, max_res=256, batch_size=3, pack_window=40, max_images_per_seq=6)


def _same(a: BatchLayout, b: BatchLayout) -> bool:
    arrays = ("sequence", "rows", "key", "grid_h", "grid_w", "num_kept")
    return (a.global_batch, a.config_version, a.config, a.num_sequences) == (
        b.global_batch,
        b.config_version,
        b.config,
        b.num_sequences,
    ) and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in arrays)


_changes = st.lists(
    st.tuples(
        st.integers(1, 12),  # windows after the previous change
        st.sampled_from(
            [
                {"max_images_per_seq": 2},
                {"packing": "best_fit"},
                {"packing": "next_fit"},
                {"packing": "exact_fit"},
                {"pack_window": 17},
                {"batch_size": 5},
                {"carry_over": False},
                {"token_drop": "constant", "drop_rate": 0.3},
            ]
        ),
    ),
    max_size=3,
)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 700),
    seed=st.integers(0, 3),
    window=st.integers(8, 64),
    strategy=st.sampled_from(["exact_fit", "best_fit", "next_fit"]),
    every=st.integers(1, 5),
    changes=_changes,
    epoch=st.integers(0, 2),
)
def test_resume_through_a_snapshot_is_byte_identical(
    n, seed, window, strategy, every, changes, epoch
):
    config = SMALL.replace(seed=seed, pack_window=window, packing=strategy)
    history = ConfigHistory.start(config)
    at = 0
    for gap, change in changes:  # PATCHes recorded at later windows, as the service does
        at += gap
        history.append(history.latest.config.replace(**change), epoch, at)
    index = imagenet_like_index(n, seed)
    straight = list(EpochPlanner(index, history, epoch).iter_layouts())
    log = SnapshotLog(every=every)
    recorder = EpochPlanner(index, history, epoch, snapshots=log)
    assert recorder.num_batches() == len(straight)
    # A fresh planner with the snapshots (a restarted service), asked for each batch
    # out of order, and a planner keeping one batch (everything else regenerated).
    fresh = EpochPlanner(index, history, epoch, snapshots=log)
    for j in sorted(range(len(straight)), key=lambda j: (j * 7919) % max(len(straight), 1)):
        assert _same(fresh.layout(j), straight[j])
    tiny = EpochPlanner(index, history, epoch, max_kept_batches=1, snapshots=log)
    for j in reversed(range(len(straight))):
        assert _same(tiny.layout(j), straight[j])
    # Through the state store's bytes too.
    stored = SnapshotLog(every=every)
    for snapshot in log.after(-1):
        stored.add(PlannerSnapshot.from_bytes(snapshot.to_bytes()))
    restarted = EpochPlanner(index, history, epoch, snapshots=stored)
    if straight:
        last = len(straight) - 1
        assert _same(restarted.layout(last), straight[last])
        assert _same(restarted.layout(last // 2), straight[last // 2])


def test_a_deep_batch_is_reached_from_the_snapshot_before_it_with_few_layouts_held():
    index = imagenet_like_index(6000, 1)
    history = ConfigHistory.start(SMALL)
    log = SnapshotLog(every=4)
    total = EpochPlanner(index, history, 0, snapshots=log).num_batches()
    deep = int(total * 0.9)
    resumed = EpochPlanner(index, history, 0, max_kept_batches=8, snapshots=log)
    resumed.layout(deep)
    before = log.before(deep)
    assert before is not None and resumed.next_window - before.window <= log.every + 1
    assert len(resumed._layouts) <= 8 + SMALL.pack_window  # the kept ones, j's window's


def test_catching_up_without_snapshots_keeps_memory_flat():
    index = imagenet_like_index(3000, 2)
    planner = EpochPlanner(index, ConfigHistory.start(SMALL), 0, max_kept_batches=5)
    total = planner.num_batches()
    again = EpochPlanner(index, ConfigHistory.start(SMALL), 0, max_kept_batches=5)
    again.layout(total - 1)
    assert len(again._layouts) <= 5 + SMALL.pack_window
