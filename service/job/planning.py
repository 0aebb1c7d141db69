"""The job's shared planners: one `EpochPlanner` per epoch, and how far each has planned.

Every rank stream of an epoch plans through the same planner, under one lock, so any
batch is the same whichever rank asks first, and a config change lands at one window
for all ranks. Planning is cheap and never waits for a consumer, so sharing the lock
holds no rank up behind another's slow trainer.

Each epoch's planner snapshots (packer.plan.snapshot) are kept with it and saved to the
state store as they are made, so a trainer resuming deep in an epoch, also after a
service restart, is served from the snapshot before its batch: a few windows planned,
never the epoch from its start.

The planned frontier (per epoch, the first window not planned yet) is persisted before a
plan leaves: a window whose batches may have been sent must never be re-planned with
another config after a restart, so a config change starts at or after it.

Images whose header read but whose pixels did not decode are recorded in the index's
reject ledger (packer.index.reject_ledger) as the fill finds them, effective from the
first epoch no planner has planned yet, and each epoch plans through
`plan_epoch(index, history, epoch, ledger, job_start)`: an epoch's plan never changes once made, a restart on the same state dir
(which keeps `job_start`, the ledger's length when the job was created) plans every
epoch as before, and the next epoch leaves the failures out.

Streamers (service.streamers) plan in processes of their own, with planners of their
own, so they cannot share this lock; they `reserve` each window here before they plan
it instead. A reservation moves the same frontier a plan here would, and answers what
planning that window needs: the config history (final up to the frontier: a change
starts at the change point, past every reserved window) and, with window 0, the decode
failures the epoch leaves out. So a PATCH lands at one window for every streamer, and a
restarted streamer, reserving again, plans every window as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from packer.config import PackingConfig
from packer.contract.cursor import Cursor, TicketError
from packer.image.reject import Reject
from packer.index.image_index import ImageIndex
from packer.index.reject_ledger import RejectLedger
from packer.plan.batch_plan import BatchPlan
from packer.plan.epoch import EpochPlan, plan_epoch
from packer.plan.history import ConfigHistory, ConfigVersion
from packer.plan.planner import EpochPlanner
from packer.plan.snapshot import PlannerSnapshot, SnapshotLog
from service.state import StateStore

# Planners are cheap to rebuild (deterministic), so only the latest few epochs are kept.
_PLANNERS_KEPT = 4

# State-store meta key: the reject ledger's length when this job was created.
LEDGER_START_KEY = "reject_ledger_start"


@dataclass(frozen=True)
class Reservation:
    """What a streamer may plan of `epoch`: every window below `next_window` (the
    epoch's frontier, persisted), with `history` (a copy; final for those windows),
    leaving out `left_out` (the ledger's decode failures for this epoch, fixed once the
    epoch is reserved; only a reservation of window 0 carries them, the one a streamer
    plans the epoch from: empty for later windows). `furthest_epoch` is the furthest
    epoch any planner reserved."""

    epoch: int
    next_window: int
    furthest_epoch: int
    history: ConfigHistory
    left_out: list[Reject]


class EpochPlanners:
    """The planner of each epoch in use, over one index and one config history."""

    def __init__(
        self,
        index: ImageIndex,
        history: ConfigHistory,
        state: StateStore,
        ledger: RejectLedger | None = None,
    ) -> None:
        self.index = index
        self.history = history
        self._state = state
        self.ledger = ledger if ledger is not None else RejectLedger.for_index(index)
        stored = state.get_meta(LEDGER_START_KEY)
        if stored is None:
            # A new job: the failures known now apply to all of its epochs.
            self.job_start = len(self.ledger)
            state.set_meta(LEDGER_START_KEY, str(self.job_start))
        else:
            self.job_start = int(stored)
        # Guards the planners, the history's entries and the frontier: a planner reads
        # the history when it plans a window, so an append must not interleave with it.
        self._lock = threading.RLock()
        self._epoch_plans: OrderedDict[int, EpochPlan] = OrderedDict()
        self._saved_snapshot: dict[int, int] = {}  # epoch -> last window saved to the store
        self._frontier = state.frontier()
        # The highest epoch any planner has planned, here or before a restart (its
        # frontier): a reject found now applies from the epoch after it.
        self._planned_epoch = max(self._frontier, default=-1)

    def plan(self, cursor: Cursor) -> BatchPlan | None:
        """The plan of the batch `cursor` asks for next; None past the end of its epoch."""
        with self._lock:
            planner = self._planner(cursor.epoch)
            plan = planner.rank_plan(cursor.rank, cursor.world_size, cursor.next_batch)
            self._save_snapshots(cursor.epoch, planner.snapshots)
            # Persist the frontier before the plan leaves (see the module docstring).
            if planner.next_window > self._frontier.get(cursor.epoch, 0):
                self._frontier[cursor.epoch] = planner.next_window
                self._state.advance_frontier(cursor.epoch, planner.next_window)
            return plan

    def reserve(self, epoch: int, window: int) -> Reservation:
        """Reserve window `window` of `epoch` (and the ones below it) for a planner in
        another process: the frontier moves past it, as if it were planned here, before
        the answer leaves. With the frontier of epoch 0 at 3, reserve(0, 5) moves it to 6,
        and a config change recorded afterwards starts at window 6 or later."""
        with self._lock:
            if window + 1 > self._frontier.get(epoch, 0):
                self._frontier[epoch] = window + 1
                self._state.advance_frontier(epoch, window + 1)
            # A reject found from now on applies from the epoch after this one at least.
            self._planned_epoch = max(self._planned_epoch, epoch)
            left_out: list[Reject] = []
            if window == 0:  # a streamer reads them from window 0's reservation only
                left_out = [
                    Reject(e.image_id, e.reason, e.detail)
                    for e in self.ledger.active(epoch, self.job_start)
                ]
            return Reservation(
                epoch=epoch,
                next_window=self._frontier[epoch],
                furthest_epoch=max(self._frontier),
                history=ConfigHistory(list(self.history.entries)),
                left_out=left_out,
            )

    def rejected_before_planning(self, epoch: int) -> list[Reject]:
        """(image_id, reason, detail) of the images `epoch` leaves out of its plan: an
        unreadable header, or a decode failure found in an earlier epoch."""
        with self._lock:
            return self._epoch_plan(epoch).rejected

    def record_rejects(self, rejected: list[Reject]) -> int:
        """Remember images the fill rejected, from the first epoch not yet planned;
        returns how many were new."""
        if not rejected:
            return 0  # the usual batch: no need to wait for the planners' lock
        with self._lock:
            # Under the lock: no planner of a later epoch is made while this records.
            return self.ledger.record(rejected, effective_epoch=self._planned_epoch + 1)

    def furthest_epoch(self) -> int:
        """The furthest epoch any planner has planned or reserved (-1: none yet)."""
        with self._lock:
            return max(self._frontier, default=-1)

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
            for epoch, epoch_plan in self._epoch_plans.items():
                planned[epoch] = max(planned.get(epoch, 0), epoch_plan.planner.next_window)
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

    def _save_snapshots(self, epoch: int, log: SnapshotLog) -> None:
        """Save the snapshots `epoch`'s planners made since the last save."""
        saved = self._saved_snapshot.get(epoch, 0)
        new = log.after(saved)
        if new:
            self._state.save_planner_snapshots(epoch, [(s.window, s.to_bytes()) for s in new])
            self._saved_snapshot[epoch] = new[-1].window

    def _planner(self, epoch: int) -> EpochPlanner:
        """The shared planner of `epoch` (call with the lock held)."""
        return self._epoch_plan(epoch).planner

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        """The shared plan of `epoch` (call with the lock held)."""
        planned = self._epoch_plans.get(epoch)
        if planned is None:
            log = SnapshotLog()
            for stored in self._state.planner_snapshots(epoch):
                log.add(PlannerSnapshot.from_bytes(stored))
            if len(log):
                self._saved_snapshot[epoch] = log.after(-1)[-1].window
            planned = plan_epoch(
                self.index, self.history, epoch, self.ledger, self.job_start, snapshots=log
            )
            self._epoch_plans[epoch] = planned
            self._planned_epoch = max(self._planned_epoch, epoch)
            while len(self._epoch_plans) > _PLANNERS_KEPT:
                self._epoch_plans.popitem(last=False)
        else:
            self._epoch_plans.move_to_end(epoch)
        return planned
