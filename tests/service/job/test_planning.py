"""The shared planners: one plan per batch whoever asks first, a frontier persisted before
a plan leaves, and epochs taken in order."""

from __future__ import annotations

import numpy as np
import pytest

from packer.contract.cursor import Cursor, TicketError
from packer.plan.history import ConfigHistory
from service.api.routers.stats import stats_response
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
    assert [p.global_batch for p in rank1_after] == [1, 3, 5]


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


# -- the reject ledger: decode failures found while serving --------------------------------


@pytest.fixture
def undecodable_dataset(tmp_path):
    """Sample images, three JPEGs whose header reads but whose pixels do not decode, one
    whose EXIF Pillow warns about, and a stray text file."""
    from packer.sample_data import write_sample_dataset
    from tests.packer.format_cases import corrupt_exif_jpeg
    from tests.packer.image_cases import truncated_jpeg

    root = tmp_path / "images"
    write_sample_dataset(root, 24, seed=5)
    for name in ("cut_a.jpg", "cut_b.jpg", "cut_c.jpg"):
        (root / "checkers" / name).write_bytes(truncated_jpeg())
    (root / "checkers" / "odd_exif.jpg").write_bytes(corrupt_exif_jpeg())
    (root / "notes.txt").write_text("a stray file\n")
    return root


def _serving_job(dataset, tmp_path, state_dir: str = "state"):
    """A job on `dataset` whose index (and reject ledger) is cached in tmp_path."""
    from packer.index.cache import load_index
    from service.job import ServiceJob
    from tests.service.service_testkit import InProcessFill

    index = load_index(str(dataset), cache_dir=tmp_path / "index-cache")
    state = StateStore(tmp_path / state_dir)
    return ServiceJob(index, SMALL_CONFIG, state, fill=InProcessFill())


def _epoch(job, epoch: int, world: int = 2) -> list:
    return [b for rank in range(world) for b in job.open_rank_stream(Cursor(rank, world, epoch))]


def _ids(batches) -> set[str]:
    from packer.contract.schema import from_record_batch

    return {i for b in batches for i in from_record_batch(b.record_batch).image_ids}


def _wire(batches) -> list[bytes]:
    return [b.record_batch.serialize().to_pybytes() + b.metadata.to_bytes() for b in batches]


CUT = {"checkers/cut_a.jpg", "checkers/cut_b.jpg", "checkers/cut_c.jpg"}


def test_decode_failures_found_in_an_epoch_are_left_out_of_the_next_and_a_restart_replays(
    undecodable_dataset, tmp_path
):
    from packer.index.reject_ledger import RejectLedger

    job = _serving_job(undecodable_dataset, tmp_path)
    epoch0 = _epoch(job, 0)
    assert not CUT & _ids(epoch0)  # planned, rejected at fill
    ledger = RejectLedger.for_index(job.index)
    assert {e.image_id for e in ledger.entries} == CUT
    assert {e.effective_epoch for e in ledger.entries} == {1}
    assert stats_response(job).model_dump()["rejected_by_reason"] == {"truncated": 3}

    epoch1 = _epoch(job, 1)
    planned1 = [job.config_control.planners.plan(Cursor(0, 1, 1, k)) for k in range(40)]
    assert not CUT & {i for p in planned1 if p is not None for i in p.image_ids}
    assert _ids(epoch1) == _ids(epoch0)  # every decodable image, again
    assert stats_response(job).model_dump()["rejected_by_reason"] == {
        "truncated": 6
    }  # 3 at fill, 3 at plan
    job.stop()
    job.state.close()

    # A restart on the same state dir plans epoch 0 as the first run did (the three
    # were in its plan), so it replays byte for byte; epoch 1 too.
    again = _serving_job(undecodable_dataset, tmp_path)
    assert _wire(_epoch(again, 0)) == _wire(epoch0)
    assert _wire(_epoch(again, 1)) == _wire(epoch1)
    again.stop()
    again.state.close()


def test_a_new_job_leaves_out_every_failure_known_when_it_starts(undecodable_dataset, tmp_path):
    first = _serving_job(undecodable_dataset, tmp_path, "one")
    _epoch(first, 0)
    first.stop()
    # Another state dir, the same index cache (and so the same ledger): a new job.
    fresh = _serving_job(undecodable_dataset, tmp_path, "two")
    assert fresh.config_control.planners.job_start == 3
    planned = [fresh.config_control.planners.plan(Cursor(0, 1, 0, k)) for k in range(40)]
    assert not CUT & {i for p in planned if p is not None for i in p.image_ids}


def test_stats_show_pillow_notes_and_skipped_files(undecodable_dataset, tmp_path):
    job = _serving_job(undecodable_dataset, tmp_path)
    _epoch(job, 0)
    summary = stats_response(job).model_dump()
    assert summary["skipped_by_extension"] == {".txt": 1}
    assert summary["notes"].get("corrupt_metadata", 0) >= 1
    assert summary["packing"]["notes"] == summary["notes"]


def test_a_restarted_service_resumes_deep_in_an_epoch_from_a_saved_snapshot(tmp_path):
    from packer.synthetic import imagenet_like_index

    index = imagenet_like_index(8000, 3)  # 250 windows of 32: snapshots at 64, 128, 192
    config = SMALL_CONFIG.replace(pack_window=32)
    state = StateStore(tmp_path)
    first = EpochPlanners(index, ConfigHistory.start(config), state)
    total = 0
    while first.plan(Cursor(0, 1, 0, total)) is not None:
        total += 1
    deep = int(total * 0.9)
    expected = first.plan(Cursor(0, 1, 0, deep))
    saved = state.planner_snapshots(0)
    assert len(saved) >= 2  # one every 64 windows, saved as they were made
    restarted = EpochPlanners(index, ConfigHistory.start(config), state)
    resumed = restarted.plan(Cursor(0, 1, 0, deep))
    assert resumed.image_ids == expected.image_ids
    assert np.array_equal(resumed.num_kept, expected.num_kept)
    planner = restarted._planner(0)
    assert planner.next_window - planner.snapshots.before(deep).window <= 64
