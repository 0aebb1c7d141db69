"""What the control plane shows: sequence layouts, trainer reports, rank lag."""

from __future__ import annotations

import numpy as np
import pytest

from packer.contract.cursor import BatchMetadata, Cursor
from packer.contract.schema import PackedBatch
from service.job.status import BatchLayout, RecentLayouts, TrainerReports, rank_rows
from service.job.streams import RankStatus


def _packed(rows: list[list[int]], image_ids: list[str]) -> PackedBatch:
    packed = PackedBatch.empty(len(rows), len(rows[0]), 4)
    packed.segment_ids[:] = rows
    packed.images_per_seq = np.array([max(r) for r in rows], np.int32)
    packed.image_ids = image_ids
    packed.labels = np.arange(len(image_ids), dtype=np.int64)
    return packed


def _metadata(batch: int) -> BatchMetadata:
    return BatchMetadata(epoch=0, batch=batch, global_batch=2 * batch + 1, rank=1, config_version=3)


def test_a_layout_gives_each_image_its_token_span():
    packed = _packed([[1, 1, 1, 2, 2, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], ["a", "b", "c"])
    (first, last) = BatchLayout.of(_metadata(4), packed).sequences()
    assert first["segments"] == [
        {"slot": 1, "start": 0, "length": 3, "image_id": "a", "label": 0},
        {"slot": 2, "start": 3, "length": 2, "image_id": "b", "label": 1},
    ]
    assert (first["row"], first["real_tokens"], first["seq_len"]) == (0, 5, 6)
    assert (first["batch"], first["global_batch"], first["rank"]) == (4, 9, 1)
    assert first["config_version"] == 3
    assert (last["row"], last["real_tokens"]) == (2, 6)  # the empty row 1 is skipped
    assert last["segments"][0]["image_id"] == "c"


def test_recent_layouts_keep_the_latest_sequences_oldest_first():
    recent = RecentLayouts(keep=2)
    recent.add(_metadata(0), _packed([[1, 0]], ["x"]))
    recent.add(_metadata(1), _packed([[0, 0]], []))  # all padding: nothing to draw
    recent.add(_metadata(2), _packed([[1, 1], [1, 0]], ["y", "z"]))
    recent.add(_metadata(3), _packed([[1, 2]], ["u", "v"]))
    ids = [s["segments"][0]["image_id"] for s in recent.sequences()]
    assert ids == ["z", "u"]  # keep=2 sequences by default, oldest first
    assert [s["batch"] for s in recent.sequences(limit=10)] == [2, 2, 3]


def test_a_trainer_waiting_a_fifth_of_its_step_is_starved():
    reports = TrainerReports()
    ok = reports.add(0, {"step": 1, "step_time_s": 0.5, "data_wait_s": 0.1}, now=100.0)
    starved = reports.add(1, {"step": 1, "step_time_s": 0.5, "data_wait_s": 0.3}, now=101.0)
    idle = reports.add(2, {"step": 0, "step_time_s": 0.0, "data_wait_s": 1.0}, now=102.0)
    assert (ok["data_wait_fraction"], ok["starved"]) == (0.2, False)
    assert (starved["data_wait_fraction"], starved["starved"]) == (0.6, True)
    assert idle["data_wait_fraction"] == 0.0
    entries = reports.entries(now=110.0)
    assert [e["rank"] for e in entries] == [0, 1, 2]
    assert [e["age_s"] for e in entries] == [10.0, 9.0, 8.0]
    assert all("received_at" not in e for e in entries)


def test_rank_rows_show_lag_behind_the_furthest_rank_of_the_same_world():
    ranks = [
        (RankStatus(Cursor(0, 2, 0, 5), updated_at=90.0, batches_sent=5, open_streams=1), 2),
        (RankStatus(Cursor(1, 2, 0, 3), updated_at=95.0, batches_sent=3), 0),
        (RankStatus(Cursor(0, 1, 1, 0), updated_at=99.0), 0),
    ]
    rows = {(r["rank"], r["world_size"]): r for r in rank_rows(ranks, now=100.0)}
    assert rows[(0, 2)]["lag_batches"] == 0 and rows[(0, 2)]["connected"] is True
    assert rows[(1, 2)]["lag_batches"] == 2 and rows[(1, 2)]["connected"] is False
    assert rows[(0, 2)]["in_flight"] == 2 and rows[(1, 2)]["idle_s"] == 5.0
    assert rows[(0, 1)]["lag_epochs"] == 0  # a world of its own leads itself


def test_a_rank_an_epoch_behind_lags_by_epochs_not_batches():
    ranks = [
        (RankStatus(Cursor(0, 2, 1, 1), updated_at=0.0), 0),
        (RankStatus(Cursor(1, 2, 0, 9), updated_at=0.0), 0),
    ]
    behind = rank_rows(ranks, now=0.0)[1]
    assert (behind["lag_epochs"], behind["lag_batches"]) == (1, None)


@pytest.mark.parametrize("limit", [1, 3])
def test_recent_sequences_honour_the_limit(limit):
    recent = RecentLayouts(keep=8)
    for batch in range(3):
        recent.add(_metadata(batch), _packed([[1, 0]], [f"i{batch}"]))
    assert len(recent.sequences(limit)) == limit
