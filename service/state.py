"""The service's state store: a small SQLite database in the state directory.

It holds what a restarted service needs to regenerate exactly the batches it would have
sent (batches are a pure function of index, config history, epoch, rank and batch index):

- `meta`: the dataset and a fingerprint of its index, so a state directory is never
  silently reused for another dataset, and the JSON config history.
- `frontier`: per epoch, the first window not yet planned. A config change must start at
  or after it: windows below it may already have left as batches, and re-planning them
  with another config after a restart would change what a trainer already received.
- `snapshots`: per epoch, the planner's state every few windows (packer.plan.snapshot),
  derived from the rest, so a restarted service reaches a batch deep in an epoch from
  the snapshot before it instead of planning the epoch again from its start.
- `cursors`: each rank's `Cursor` (epoch, next batch index) and when it last moved, for
  /stats and for an operator; the trainer's own cursor in its ticket is what a reconnect
  resumes from. The job keeps the ranks of one world size (`keep_world_size`).

With no state directory the database lives in memory (nothing survives a restart).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from packer.contract.cursor import Cursor
from packer.plan.history import ConfigHistory

DB_NAME = "navit-state.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frontier (epoch INTEGER PRIMARY KEY, next_window INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    epoch INTEGER NOT NULL,
    window INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (epoch, window)
);
CREATE TABLE IF NOT EXISTS cursors (
    rank INTEGER NOT NULL,
    world_size INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    next_batch INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (rank, world_size)
);
"""


@dataclass(frozen=True)
class CursorRecord:
    """A rank's cursor as the store keeps it: where it stands, and since when."""

    cursor: Cursor
    updated_at: float  # unix seconds of its last move


class StateStore:
    """Thread-safe access to the state database (one connection behind a lock)."""

    def __init__(self, state_dir: str | Path | None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is None:
            target = ":memory:"
        else:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            target = str(self.state_dir / DB_NAME)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        if self.state_dir is not None:
            # WAL + NORMAL: a commit survives a process crash, and writers do not block
            # readers; an OS crash may lose the last commits, which only rewinds cursors.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta --------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def load_history(self) -> ConfigHistory | None:
        text = self.get_meta("config_history")
        return ConfigHistory.from_json(text) if text else None

    def save_history(self, history: ConfigHistory) -> None:
        self.set_meta("config_history", history.to_json())

    # -- planned frontier --------------------------------------------------------------

    def frontier(self) -> dict[int, int]:
        """epoch -> first window not yet planned (only epochs planned at least once)."""
        with self._lock:
            rows = self._db.execute("SELECT epoch, next_window FROM frontier").fetchall()
        return {int(e): int(w) for e, w in rows}

    def advance_frontier(self, epoch: int, next_window: int) -> None:
        """Record that windows below `next_window` of `epoch` are planned (never lowers)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO frontier (epoch, next_window) VALUES (?, ?) "
                "ON CONFLICT(epoch) DO UPDATE SET "
                "next_window = MAX(next_window, excluded.next_window)",
                (epoch, next_window),
            )

    # -- planner snapshots -------------------------------------------------------------

    def planner_snapshots(self, epoch: int) -> list[bytes]:
        """The planner snapshots of `epoch` (PlannerSnapshot.to_bytes), in window order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state FROM snapshots WHERE epoch = ? ORDER BY window", (epoch,)
            ).fetchall()
        return [bytes(state) for (state,) in rows]

    def save_planner_snapshots(self, epoch: int, snapshots: list[tuple[int, bytes]]) -> None:
        """Keep (window, state) snapshots of `epoch`; one already kept stays as it is."""
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO snapshots (epoch, window, state) VALUES (?, ?, ?)",
                [(epoch, window, state) for window, state in snapshots],
            )

    # -- rank cursors ------------------------------------------------------------------

    def cursors(self) -> list[CursorRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rank, world_size, epoch, next_batch, updated_at FROM cursors "
                "ORDER BY world_size, rank"
            ).fetchall()
        return [
            CursorRecord(Cursor(int(r), int(w), int(e), int(b)), float(t)) for r, w, e, b, t in rows
        ]

    def save_cursors(self, records: list[CursorRecord]) -> None:
        """Insert or replace the cursor of each record's (rank, world_size)."""
        if not records:
            return
        with self._lock:
            self._db.executemany(
                "INSERT INTO cursors (rank, world_size, epoch, next_batch, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(rank, world_size) DO UPDATE SET "
                "epoch = excluded.epoch, next_batch = excluded.next_batch, "
                "updated_at = excluded.updated_at",
                [
                    (
                        r.cursor.rank,
                        r.cursor.world_size,
                        r.cursor.epoch,
                        r.cursor.next_batch,
                        r.updated_at,
                    )
                    for r in records
                ],
            )

    def keep_world_size(self, world_size: int) -> None:
        """Delete the cursors of every other world size."""
        with self._lock:
            self._db.execute("DELETE FROM cursors WHERE world_size != ?", (world_size,))
