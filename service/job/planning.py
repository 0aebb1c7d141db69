"""The job's shared planners: one `EpochPlanner` per epoch, and how far each has planned.

Every rank stream of an epoch plans through the same planner, under one lock, so any
batch is the same whichever rank asks first, and a config change lands at one window
for all ranks. Planning is cheap and never waits for a consumer, so sharing the lock
holds no rank up behind another's slow trainer.

The planned frontier (per epoch, the first window not planned yet) is persisted before a
plan leaves: a window whose batches may have been sent must never be re-planned with
another config after a restart, so a config change starts at or after it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import pyarrow as pa

from packer.config import PackingConfig
from packer.contract.cursor import Cursor, TicketError
from packer.plan import BatchPlan, ConfigHistory, ConfigVersion, EpochPlanner
from service.state import StateStore

# Planners are cheap to rebuild (deterministic), so only the latest few epochs are kept.
_PLANNERS_KEPT = 4


class EpochPlanners:
    """The planner of each epoch in use, over one index and one config history."""

    def __init__(self, index: pa.Table, history: ConfigHistory, state: StateStore) -> None:
        self.index = index
        self.history = history
        self._state = state
        # Guards the planners, the history's entries and the frontier: a planner reads
        # the history when it plans a window, so an append must not interleave with it.
        self._lock = threading.RLock()
        self._planners: OrderedDict[int, EpochPlanner] = OrderedDict()
        self._frontier = state.frontier()

    def plan(self, cursor: Cursor) -> BatchPlan | None:
        """The plan of the batch `cursor` asks for next; None past the end of its epoch."""
        with self._lock:
            planner = self._planner(cursor.epoch)
            plan = planner.rank_batch(cursor.rank, cursor.world_size, cursor.next_batch)
            # Persist the frontier before the plan leaves (see the module docstring).
            if planner.next_window > self._frontier.get(cursor.epoch, 0):
                self._frontier[cursor.epoch] = planner.next_window
                self._state.advance_frontier(cursor.epoch, planner.next_window)
            return plan

    def check_epoch(self, epoch: int) -> None:
        """Refuse an epoch more than one past the furthest planned (TicketError)."""
        with self._lock:
            furthest = max(self._frontier, default=None)
        if furthest is not None and epoch > furthest + 1:
            # Planning an epoch far ahead would pin every later config change there.
            raise TicketError(
                "epoch",
                f"epoch {epoch} is more than one past the furthest planned epoch "
                f"{furthest}; ranks move through epochs in order",
            )

    def change_point(self) -> tuple[int, int]:
        """The first (epoch, window) no planner has planned: where a change can start."""
        with self._lock:
            planned = dict(self._frontier)
            for epoch, planner in self._planners.items():
                planned[epoch] = max(planned.get(epoch, 0), planner.next_window)
            point = (max(planned), planned[max(planned)]) if planned else (0, 0)
            latest = self.history.latest
            return max(point, (latest.epoch, latest.window))

    def append_config(self, config: PackingConfig) -> ConfigVersion:
        """Record `config` from the change point on, and persist the history."""
        with self._lock:
            epoch, window = self.change_point()
            entry = self.history.append(config, epoch, window)
            self._state.save_history(self.history)
            return entry

    def _planner(self, epoch: int) -> EpochPlanner:
        """The shared planner of `epoch` (call with the lock held)."""
        planner = self._planners.get(epoch)
        if planner is None:
            planner = EpochPlanner(self.index, self.history, epoch)
            self._planners[epoch] = planner
            while len(self._planners) > _PLANNERS_KEPT:
                self._planners.popitem(last=False)
        else:
            self._planners.move_to_end(epoch)
        return planner
