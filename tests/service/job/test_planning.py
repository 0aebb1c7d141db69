"""The shared planners: one plan per batch whoever asks first, a frontier persisted before
a plan leaves, and epochs taken in order."""

from __future__ import annotations

import numpy as np
import pytest

from packer.contract.cursor import Cursor, TicketError
from packer.plan import ConfigHistory
from service.job.planning import EpochPlanners
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG


def _planners(index, state: StateStore | None = None) -> EpochPlanners:
    return EpochPlanners(index, ConfigHistory.start(SMALL_CONFIG), state or StateStore(None))


def test_the_same_plans_whichever_rank_asks_first(sample_index):
    alone, shared = _planners(sample_index), _planners(sample_index)
    rank1_alone = [alone.plan(Cursor(1, 2, 0, k)) for k in range(3)]
    for k in range(3):
        shared.plan(Cursor(0, 2, 0, k))
    rank1_after = [shared.plan(Cursor(1, 2, 0, k)) for k in range(3)]
    assert [p.image_ids for p in rank1_alone] == [p.image_ids for p in rank1_after]
    assert [p.batch for p in rank1_after] == [1, 3, 5]


def test_the_frontier_is_saved_before_a_plan_leaves(sample_index, tmp_path):
    state = StateStore(tmp_path)
    planners = _planners(sample_index, state)
    assert planners.change_point() == (0, 0)
    planners.plan(Cursor(0, 1, 0, 0))
    point = planners.change_point()
    assert point[0] == 0 and point[1] > 0
    assert state.frontier() == {0: point[1]}
    # After a restart the change point does not fall back below what may have been sent.
    assert _planners(sample_index, state).change_point() == point


def test_past_the_end_of_the_epoch_there_is_no_plan(sample_index):
    planners = _planners(sample_index)
    assert planners.plan(Cursor(0, 1, 0, 10_000)) is None


def test_epochs_are_taken_in_order(sample_index):
    planners = _planners(sample_index)
    planners.check_epoch(5)  # nothing planned yet: any epoch may start
    planners.plan(Cursor(0, 1, 0, 0))
    planners.check_epoch(1)
    with pytest.raises(TicketError) as caught:
        planners.check_epoch(2)
    assert caught.value.field == "epoch"


def test_a_config_appended_applies_from_the_change_point_and_is_saved(sample_index):
    state = StateStore(None)
    planners = _planners(sample_index, state)
    planners.plan(Cursor(0, 1, 0, 0))
    point = planners.change_point()
    entry = planners.append_config(SMALL_CONFIG.replace(max_images_per_seq=2))
    assert (entry.version, entry.epoch, entry.window) == (2, *point)
    assert state.load_history().entries == planners.history.entries
    # Epoch 0 was planned to its end (the carry-over holds every window's bins), so the
    # change lands after it: all of epoch 0 stays version 1, all of epoch 1 is version 2.
    assert point == (0, 3)
    epoch0 = [planners.plan(Cursor(0, 1, 0, k)) for k in range(7)]
    epoch1 = [planners.plan(Cursor(0, 1, 1, k)) for k in range(7)]
    assert {p.config_version for p in epoch0} == {1}
    assert {p.config_version for p in epoch1 if p is not None} == {2}
    assert all(np.bincount(p.sequence).max() <= 2 for p in epoch1 if p is not None)
