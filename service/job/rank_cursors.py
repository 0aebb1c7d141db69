"""Each trainer rank's cursor as the job knows it: where it stands, since when, and what
/stats tells about it besides (batches sent, connected, fill tasks in flight, lag).

A rank's position is a `Cursor`: the next batch not yet handed to the transport. It
moves when the transport asks for the next batch (the previous one has left) and is
saved to the state store right then, one small SQLite upsert per move, so the store never
lags behind a stalled stream: after a `kill -9` it shows where each rank stood. It is for
/stats and an operator; a reconnecting trainer resumes from its own ticket. The rank
streams of this process move it directly; a streamer's moves arrive through the
coordinator (service.streamers), a batch of moves at a time.

Per-rank state is kept for one world size, the latest one a stream opened with: a
stream of a new world size replaces the old world size's rows in memory and in the
store. A stream of an older world size still open keeps streaming, but its rank is no
longer shown.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from packer.contract.cursor import Cursor
from service.state import CursorRecord, StateStore

log = logging.getLogger("navit.service")


@dataclass
class RankStatus:
    """A rank's cursor, and what /stats tells about it besides."""

    cursor: Cursor
    updated_at: float  # when its cursor last moved
    batches_sent: int = 0
    open_streams: int = 0
    in_flight: int = 0  # fill tasks pending for its streams when its cursor last moved


class RankCursors:
    """The ranks of one world size: their cursors (saved as they move) and statuses."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._lock = threading.Lock()  # the statuses below
        # Serialises writes to the store's cursors, so that a save never lands after (and
        # undoes) the pruning of its world size. Taken before self._lock, never inside it.
        self._save_lock = threading.Lock()
        stored = state.cursors()
        # The world size whose ranks are kept: the one that moved last.
        self._world_size = (
            max(stored, key=lambda r: r.updated_at).cursor.world_size if stored else 0
        )
        self._ranks: dict[tuple[int, int], RankStatus] = {
            (r.cursor.rank, r.cursor.world_size): RankStatus(r.cursor, r.updated_at)
            for r in stored
            if r.cursor.world_size == self._world_size
        }
        if len(self._ranks) < len(stored):
            state.keep_world_size(self._world_size)

    def opened(self, cursor: Cursor, now: float | None = None) -> None:
        """A stream of `cursor.rank` opened at `cursor` (a new world size replaces the
        old one's ranks, see the module doc)."""
        now = time.time() if now is None else now
        with self._save_lock:
            with self._lock:
                new_world = cursor.world_size != self._world_size
                if new_world:
                    self._world_size = cursor.world_size
                    self._ranks.clear()
                rank = self._ranks.setdefault(_key(cursor), RankStatus(cursor, now))
                rank.cursor = cursor
                rank.updated_at = now
                rank.open_streams += 1
                record = CursorRecord(cursor, now)
            if new_world:
                self._state.keep_world_size(cursor.world_size)
            self._save([record])

    def advanced(self, cursor: Cursor, in_flight: int = 0, now: float | None = None) -> None:
        """A batch has left: the rank now stands at `cursor` (not for a world size no
        longer kept)."""
        now = time.time() if now is None else now
        with self._save_lock:
            with self._lock:
                rank = self._ranks.get(_key(cursor))
                if rank is None:
                    return
                rank.cursor = cursor
                rank.updated_at = now
                rank.batches_sent += 1
                rank.in_flight = in_flight
                record = CursorRecord(cursor, now)
            self._save([record])

    def closed(self, cursor: Cursor) -> None:
        """A stream of `cursor`'s rank ended."""
        with self._lock:
            rank = self._ranks.get(_key(cursor))
            if rank is not None:
                rank.open_streams -= 1
                if rank.open_streams <= 0:
                    rank.in_flight = 0

    def flush(self) -> None:
        """Save every kept rank's cursor (each is saved as it moves; this is for stop)."""
        with self._save_lock:
            with self._lock:
                records = [CursorRecord(r.cursor, r.updated_at) for r in self._ranks.values()]
            self._save(records)

    def _save(self, records: list[CursorRecord]) -> None:
        """Save cursors (with the save lock held); a store closed at shutdown is logged,
        it must not end a stream with an error."""
        try:
            self._state.save_cursors(records)
        except sqlite3.Error:
            log.warning("could not save rank cursors %s", records, exc_info=True)

    # -- what /stats shows -------------------------------------------------------------

    def ranks(self) -> list[tuple[RankStatus, int]]:
        """A copy of each rank's status with its fill tasks in flight, by (world, rank)."""
        with self._lock:
            items = sorted(self._ranks.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            return [(dataclasses.replace(rank), rank.in_flight) for _, rank in items]

    def positions(self, now: float) -> list[dict[str, Any]]:
        """Each kept rank's cursor and its lag behind the furthest rank (`rank_rows`)."""
        return rank_rows(self.ranks(), now)

    def open_streams(self) -> tuple[int, int]:
        """(open streams of the kept ranks, the most fill tasks in flight of a connected
        rank when its cursor last moved)."""
        with self._lock:
            active = sum(max(r.open_streams, 0) for r in self._ranks.values())
            most = max((r.in_flight for r in self._ranks.values() if r.open_streams > 0), default=0)
        return active, most


def _key(cursor: Cursor) -> tuple[int, int]:
    return cursor.rank, cursor.world_size


def rank_rows(ranks: list[tuple[RankStatus, int]], now: float) -> list[dict[str, Any]]:
    """Each rank's cursor and its lag behind the furthest rank of its world size.

    With ranks 0 and 1 of 2 at (epoch 0, batch 5) and (epoch 0, batch 3), rank 1 lags
    by 2 batches; a rank an epoch behind lags by 1 epoch and lag_batches is None.
    """
    lead: dict[int, tuple[int, int]] = {}
    for rank, _ in ranks:
        c = rank.cursor
        lead[c.world_size] = max(lead.get(c.world_size, (0, 0)), (c.epoch, c.next_batch))
    rows = []
    for rank, in_flight in ranks:
        c = rank.cursor
        lead_epoch, lead_batch = lead[c.world_size]
        rows.append(
            {
                "rank": c.rank,
                "world_size": c.world_size,
                "epoch": c.epoch,
                "next_batch": c.next_batch,
                "batches_sent": rank.batches_sent,
                "connected": rank.open_streams > 0,
                "in_flight": in_flight,
                "lag_epochs": lead_epoch - c.epoch,
                "lag_batches": lead_batch - c.next_batch if lead_epoch == c.epoch else None,
                "idle_s": round(now - rank.updated_at, 3),
            }
        )
    return rows
