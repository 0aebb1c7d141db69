"""A streamer's planners: the planner of each epoch, planning only reserved windows.

A streamer plans the epochs of its own ranks with the packer's planner
(`plan_epoch` -> `EpochPlanner.rank_plan`, as the service's shared planners do), in its
own process. The planner reads the config history once per window it plans
(`history.at(epoch, window)`), and that read is where coordination happens: the
history here is a `ReservedHistory`, whose `at` first reserves the window with the
coordinator (`EpochPlanners.reserve`) unless the coordinator's frontier already lies
past it. The coordinator moves the job's planned frontier past the window before it
answers, and a config change always starts at the frontier, so the history the answer
carries is final for that window: every streamer, and a streamer restarted later,
plans it with the same config, and a PATCH lands at the same window for all of them.

The reject ledger follows the same rule: an epoch's decode failures (left out before
planning) come with the reservation of its window 0 and never change afterwards.

Example: streamer A reserves (0, 0) and (0, 1): the frontier of epoch 0 is 2. A PATCH
now records version 2 from (0, 2). Streamer B, reading window 0 and 1, finds them below
the frontier it was last told (or asks, and is told 2): version 1, as A. Either, reading
window 2, reserves it and gets the history with version 2 from (0, 2).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from packer.contract.cursor import Cursor
from packer.image.reject import Reject
from packer.index.image_index import ImageIndex
from packer.index.reject_ledger import RejectLedger
from packer.plan.batch_plan import BatchPlan
from packer.plan.epoch import EpochPlan, plan_epoch
from packer.plan.history import ConfigHistory, ConfigVersion
from service.job.planning import _PLANNERS_KEPT, Reservation
from service.streamers.reporter import EventReporter

Reserve = Callable[[int, int], Reservation]


class ReservedHistory(ConfigHistory):
    """The job's config history as far as the coordinator made it final (module doc)."""

    def __init__(self, reserve: Reserve) -> None:
        super().__init__([])
        self._reserve = reserve
        self._final: dict[int, int] = {}  # epoch -> windows below it are reserved

    def at(self, epoch: int, window: int) -> ConfigVersion:
        if window >= self._final.get(epoch, 0):
            self.accept(self._reserve(epoch, window))
        return super().at(epoch, window)

    def accept(self, reservation: Reservation) -> None:
        """Take the history of a reservation (in place: the planners hold this object)."""
        self.entries[:] = reservation.history.entries
        epoch = reservation.epoch
        self._final[epoch] = max(self._final.get(epoch, 0), reservation.next_window)
        for old in sorted(self._final)[:-_PLANNERS_KEPT]:
            del self._final[old]


class StreamerPlanners:
    """The RankPlanners of a streamer's rank streams (service.job.streams)."""

    def __init__(self, index: ImageIndex, reserve: Reserve, reporter: EventReporter) -> None:
        self.index = index
        self._reserve_at_coordinator = reserve
        self._reporter = reporter
        self._lock = threading.RLock()  # the planners and the history they read
        self.history = ReservedHistory(self._reserve)
        self._epoch_plans: OrderedDict[int, EpochPlan] = OrderedDict()
        self._furthest_epoch = -1

    def _reserve(self, epoch: int, window: int) -> Reservation:
        reservation = self._reserve_at_coordinator(epoch, window)
        self._furthest_epoch = max(self._furthest_epoch, reservation.furthest_epoch)
        return reservation

    def plan(self, cursor: Cursor) -> BatchPlan | None:
        with self._lock:
            planner = self._epoch_plan(cursor.epoch).planner
            return planner.rank_plan(cursor.rank, cursor.world_size, cursor.next_batch)

    def rejected_before_planning(self, epoch: int) -> list[Reject]:
        with self._lock:
            return self._epoch_plan(epoch).rejected

    def record_rejects(self, rejected: list[Reject]) -> int:
        """Send decode failures to the coordinator's ledger (it decides from which
        epoch they apply); returns how many were sent."""
        if rejected:
            self._reporter.post({"kind": "rejects", "rejects": [list(r) for r in rejected]})
        return len(rejected)

    def check_epoch(self, epoch: int) -> None:
        """Refuse an epoch more than one past the furthest planned (TicketError): known
        here when it is near, asked of the coordinator otherwise."""
        furthest = max(self._furthest_epoch, self._reporter.furthest_epoch)
        if epoch <= furthest + 1:
            return  # the furthest epoch only grows: the coordinator would agree
        self._reporter.call({"kind": "check_epoch", "epoch": epoch})

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        """The plan of `epoch` (call with the lock held)."""
        planned = self._epoch_plans.get(epoch)
        if planned is not None:
            self._epoch_plans.move_to_end(epoch)
            return planned
        # Window 0 first: its reservation fixes the decode failures the epoch leaves out.
        reservation = self._reserve(epoch, 0)
        self.history.accept(reservation)
        ledger = RejectLedger()
        ledger.record(reservation.left_out, effective_epoch=0)
        planned = plan_epoch(self.index, self.history, epoch, ledger, job_start=len(ledger))
        self._epoch_plans[epoch] = planned
        while len(self._epoch_plans) > _PLANNERS_KEPT:
            self._epoch_plans.popitem(last=False)
        return planned
