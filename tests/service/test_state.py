"""The state store: config history, the planned frontier and rank cursors survive a
reopen of the same directory; with no directory nothing is written anywhere."""

from __future__ import annotations

from packer.contract.cursor import Cursor
from packer.plan.history import ConfigHistory
from service.state import DB_NAME, CursorRecord, StateStore
from tests.service.service_testkit import SMALL_CONFIG


def test_the_config_history_round_trips_through_a_reopen(tmp_path):
    history = ConfigHistory.start(SMALL_CONFIG)
    history.append(SMALL_CONFIG.replace(max_images_per_seq=3), epoch=1, window=4)
    store = StateStore(tmp_path)
    assert store.load_history() is None
    store.save_history(history)
    store.set_meta("dataset", "sample")
    store.close()

    reopened = StateStore(tmp_path)
    loaded = reopened.load_history()
    assert loaded is not None and loaded.entries == history.entries
    assert reopened.get_meta("dataset") == "sample"
    assert reopened.get_meta("absent") is None
    reopened.close()


def test_the_frontier_only_advances(tmp_path):
    store = StateStore(tmp_path)
    store.advance_frontier(0, 3)
    store.advance_frontier(0, 2)  # a late writer with an older value changes nothing
    store.advance_frontier(1, 1)
    assert store.frontier() == {0: 3, 1: 1}
    store.advance_frontier(0, 5)
    store.close()
    assert StateStore(tmp_path).frontier() == {0: 5, 1: 1}


def test_cursors_persist_across_a_reopen_one_per_rank_and_world_size(tmp_path):
    store = StateStore(tmp_path)
    store.save_cursors(
        [CursorRecord(Cursor(1, 2, 0, 4), 10.0), CursorRecord(Cursor(0, 2, 0, 5), 11.0)]
    )
    store.save_cursors([CursorRecord(Cursor(1, 2, 1, 0), 12.0)])  # rank 1 moved on
    store.save_cursors([CursorRecord(Cursor(0, 1, 0, 7), 13.0)])  # another world size
    store.save_cursors([])
    store.close()

    reopened = StateStore(tmp_path)
    assert reopened.cursors() == [
        CursorRecord(Cursor(0, 1, 0, 7), 13.0),
        CursorRecord(Cursor(0, 2, 0, 5), 11.0),
        CursorRecord(Cursor(1, 2, 1, 0), 12.0),
    ]
    reopened.close()


def test_without_a_directory_the_store_lives_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = StateStore(None)
    assert store.state_dir is None
    store.save_history(ConfigHistory.start(SMALL_CONFIG))
    store.advance_frontier(0, 2)
    store.save_cursors([CursorRecord(Cursor(0, 1, 0, 1), 1.0)])
    assert store.frontier() == {0: 2} and len(store.cursors()) == 1
    store.close()
    assert list(tmp_path.iterdir()) == []  # no database file written
    fresh = StateStore(None)
    assert fresh.load_history() is None and fresh.frontier() == {} and fresh.cursors() == []
    fresh.close()
    assert not (tmp_path / DB_NAME).exists()


def test_keep_world_size_deletes_the_cursors_of_every_other(tmp_path):
    store = StateStore(tmp_path)
    store.save_cursors([CursorRecord(Cursor(r, w, 0, 1), 1.0) for w in (1, 2, 3) for r in range(w)])
    store.keep_world_size(2)
    assert [(r.cursor.rank, r.cursor.world_size) for r in store.cursors()] == [(0, 2), (1, 2)]
    store.close()
