"""Planning one epoch: the one way every caller does it.

    index --(reject ledger: decode failures known for this epoch)--> the epoch's index
          --(header rejects: what it leaves out)--> EpochPlan.rejected
          --(EpochPlanner)--> EpochPlan.planner, every batch of the epoch

`navit pack` (packer.pipeline), `navit simulate` (packer.plan.simulate), the service's
shared planners (service.job.planning) and the in-process packing (packer.fill.in_process)
all plan through `plan_epoch`, so an image is left out for the same reason everywhere
and what simulate predicts is what the others deliver.
"""

from __future__ import annotations

from dataclasses import dataclass

from packer.image.reject import Reject
from packer.index.image_index import ImageIndex, header_rejects
from packer.index.reject_ledger import RejectLedger
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.plan.snapshot import SnapshotLog


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's planner, and the images its plan leaves out before planning."""

    epoch: int
    planner: EpochPlanner
    rejected: list[Reject]  # an unreadable header, or a decode failure the ledger knows


def plan_epoch(
    index: ImageIndex,
    history: ConfigHistory,
    epoch: int,
    ledger: RejectLedger | None = None,
    job_start: int | None = None,
    snapshots: SnapshotLog | None = None,
) -> EpochPlan:
    """Plan `epoch` of `index` under `history`.

    `ledger` (None: none) leaves out the decode failures it knows for this epoch: those
    recorded before the job started (`job_start`, the ledger's length then; None: every
    entry, as simulate and a new pack want) and the job's own from their effective epoch
    on (packer.index.reject_ledger). For an index with two unreadable headers and one
    known decode failure, `rejected` holds the three and the planner places neither.
    `snapshots` are the epoch's planner snapshots kept so far (packer.plan.snapshot).
    """
    if ledger is not None:
        index = ledger.apply(index, epoch, len(ledger) if job_start is None else job_start)
    planner = EpochPlanner(index, history, epoch, snapshots=snapshots)
    return EpochPlan(epoch, planner, header_rejects(index))
