"""The planner: from the index alone, decide every packed batch of an epoch. Pure, no I/O.

Per epoch: a seeded shuffle of the index (packer.plan.shuffle, computed per place, no
permutation array), then window by window of `pack_window` plannable images: per-image
draws (resolution -> patch grid -> kept tokens, see packer.plan.sampling), bin packing, a
seeded shuffle of the window's finished sequences, and batches of `batch_size`
sequences (the last one short: no batch is padded with empty rows). Ranks are dealt the
global batches by packer.contract.rank_layout (striding, the epoch's tail shared out),
so a rank's stream is a pure function of (index, config history, epoch, rank,
world_size).

Everything per image is numpy over a window; only the bin packing walks sequences in
Python. A window's plan depends on what the windows before it left over (the carry), so
the planner records its whole state every few windows (packer.plan.snapshot) and a batch
no longer kept is regenerated from the latest snapshot before it, never from the epoch's
start. A planned batch is a `BatchLayout` (table rows and draws); `plan` adds the ids,
locations and labels read from the index (`BatchPlan`, what the fill needs).

The planner decides windows lazily, so a config change recorded in the history for the
next unplanned window takes effect there (see ConfigHistory). Decoding pixels is the
fill step's job (packer.fill); nothing here reads an image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from packer.config import PackingConfig
from packer.contract.rank_layout import (
    EpochLayout,
    epoch_layout,
    global_batch_index,
    round_is_plain,
)
from packer.index.image_index import ImageIndex
from packer.plan.batch_plan import BatchLayout, BatchPlan
from packer.plan.history import ConfigHistory, ConfigVersion
from packer.plan.packing import Bin, BinLimits, Carry, pack_window
from packer.plan.sampling import plan_images
from packer.plan.shuffle import EpochOrder
from packer.plan.snapshot import PendingSequences, PlannerSnapshot, SnapshotLog
from packer.plan.tail import tail_layout

# Bump when the same inputs plan different batches: a service refuses a state dir whose
# batches an older planner decided (service.job.config_control).
PLANNER_VERSION = 2
_STREAM_WINDOW_ORDER = 0x0DE5


def _carry_limit(config: PackingConfig) -> int:
    """How much a window may leave to the next: exact fit keeps max(64, pack_window / 16)
    small images waiting (enough to finish the next window's sequences exactly), best fit
    its pack_window / 32 emptiest open bins."""
    if config.packing == "exact_fit":
        return max(64, config.pack_window // 16)
    return max(1, config.pack_window // 32)


class EpochPlanner:
    """Plans one epoch's batches lazily, window by window. Deterministic given its inputs.

    Memory stays bounded whatever the epoch's size: only the latest `max_kept_batches`
    layouts are kept (also while catching up to a far batch), plus a snapshot every
    `snapshots.every` windows; asking for an older batch plans it again from the latest
    snapshot before it, in a second planner that advances with a lagging reader.

    Not thread-safe: the service guards a shared planner with a lock.
    """

    def __init__(
        self,
        index: ImageIndex,
        history: ConfigHistory,
        epoch: int,
        max_kept_batches: int = 4096,
        snapshots: SnapshotLog | None = None,
    ) -> None:
        if max_kept_batches < 1:
            raise ValueError(f"max_kept_batches must be positive, got {max_kept_batches}")
        self.max_kept_batches = max_kept_batches
        self.index = index
        self.history = history
        self.epoch = epoch
        self.snapshots = snapshots if snapshots is not None else SnapshotLog()
        first = history.at(epoch, 0).config
        self._order = EpochOrder(index.num_rows, first.seed, epoch)
        self._layouts: OrderedDict[int, BatchLayout] = OrderedDict()  # the latest ones
        self._regenerator: EpochPlanner | None = None  # plans forgotten batches again
        self._restore(
            PlannerSnapshot(0, 0, 0, 0, 0, Carry(), np.zeros((0, 4), np.int64), _NO_PENDING)
        )

    @property
    def next_window(self) -> int:
        """The first window not yet planned: where a config change would take effect."""
        return self._window

    def layout(self, j: int) -> BatchLayout | None:
        """Global batch j's layout, or None when the epoch has fewer batches."""
        if j < self._num_batches:
            kept = self._layouts.get(j)
            return kept if kept is not None else self._regenerated(j)
        # Far ahead: start from the latest snapshot before j rather than plan up to it.
        snapshot = self.snapshots.before(j)
        if snapshot is not None and snapshot.window > self._window and not self._done:
            self._restore(snapshot)
        while self._num_batches <= j and not self._done:
            self._plan_window()
            self._forget_before(j)  # also while catching up: memory stays flat
        self._forget_before(j)
        return self._layouts.get(j) if j < self._num_batches else None

    def _forget_before(self, j: int) -> None:
        """Forget the oldest layouts, never j's: at most max_kept_batches plus the
        batches of the window that produced j are kept."""
        while len(self._layouts) > self.max_kept_batches and next(iter(self._layouts)) < j:
            self._layouts.popitem(last=False)

    def plan(self, j: int) -> BatchPlan | None:
        """Global batch j of the epoch, or None when the epoch has fewer batches."""
        layout = self.layout(j)
        return None if layout is None else BatchPlan.located(layout, self.index)

    def num_batches(self) -> int:
        """The epoch's batch count (plans every remaining window)."""
        while not self._done:
            self._plan_window()
            while len(self._layouts) > self.max_kept_batches:
                self._layouts.popitem(last=False)
        return self._num_batches

    def rank_plan(self, rank: int, world_size: int, k: int) -> BatchPlan | None:
        """Batch k of `rank`'s stream, dealt by packer.contract.rank_layout: global batch
        `k * world_size + rank`, except in the epoch's tail, whose sequences are shared out
        so that every rank gets the same count of batches without padding batches: with 5
        batches of 8 sequences and 2 ranks, ranks 0 and 1 get [0, 2] and [1, 3], then
        4 sequences each of batch 4. None past the rank's last batch.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        last_of_next_round = (k + 2) * world_size - 1
        if last_of_next_round >= self._num_batches:
            self.layout(last_of_next_round)  # plans up to it, or to the epoch's end
        if round_is_plain(self._num_batches, world_size, k):
            return self.plan(global_batch_index(rank, world_size, k))
        layout = self._rank_layout(world_size)
        where = layout.batch_of(rank, k)
        if where is None:
            return None
        # A filler is shaped and labelled by the config that planned the epoch's last
        # window, never by a later one: a config change recorded after the epoch was
        # planned (it starts past the last window) must not alter a batch already sent.
        last = self._version or self.history.at(self.epoch, 0)
        j = global_batch_index(rank, world_size, k)
        if isinstance(where, int):
            plan = self.plan(where)
            return plan if plan is not None else BatchPlan.empty(self.epoch, j, last)
        if where.start == where.stop:
            return BatchPlan.empty(self.epoch, j, last)
        zone = [self.layout(i) for i in range(where.zone_start, layout.num_batches)]
        share = tail_layout([z for z in zone if z is not None], where, j)
        return BatchPlan.located(share, self.index)

    def _rank_layout(self, world_size: int) -> EpochLayout:
        """The whole epoch's rank layout (plans every remaining window). A tail zone whose
        batches come from two config versions is not shared: a batch holds one version's
        sequences only, so those ranks get fillers as before."""
        num_batches = self.num_batches()

        def sequences_in(j: int) -> int:
            return self.layout(j).num_sequences  # type: ignore[union-attr]

        layout = epoch_layout(num_batches, world_size, sequences_in)
        zone = range(layout.zone_start, num_batches)
        if len({self.layout(j).config_version for j in zone}) > 1:  # type: ignore[union-attr]
            layout = epoch_layout(num_batches, world_size, sequences_in, share=False)
        return layout

    def iter_rank_plans(self, rank: int, world_size: int, start: int = 0) -> Iterator[BatchPlan]:
        k = start
        while (plan := self.rank_plan(rank, world_size, k)) is not None:
            yield plan
            k += 1

    def iter_plans(self) -> Iterator[BatchPlan]:
        j = 0
        while (plan := self.plan(j)) is not None:
            yield plan
            j += 1

    def iter_layouts(self) -> Iterator[BatchLayout]:
        """Every batch's layout in order: what simulate and the benches count."""
        j = 0
        while (layout := self.layout(j)) is not None:
            yield layout
            j += 1

    # -- state -------------------------------------------------------------------------

    def snapshot(self) -> PlannerSnapshot:
        """The planner's whole state before its next window."""
        return PlannerSnapshot(
            window=self._window,
            cursor=self._cursor,
            taken=self._taken,
            num_batches=self._num_batches,
            version=0 if self._version is None else self._version.version,
            carry=_copied(self._carry),
            carried=self._carried,
            pending=self._pending,
        )

    def _restore(self, snapshot: PlannerSnapshot) -> None:
        self._window = snapshot.window  # next unplanned window
        self._cursor = snapshot.cursor  # values of the epoch order consumed
        self._taken = snapshot.taken  # plannable images drawn
        self._num_batches = snapshot.num_batches  # batches planned so far
        self._version: ConfigVersion | None = None  # the version of the last window
        if snapshot.version:
            self._version = next(e for e in self.history.entries if e.version == snapshot.version)
        self._carry = _copied(snapshot.carry)  # what the last window left to the next
        self._carried = snapshot.carried  # (row, grid_h, grid_w, num_kept) of the carry
        self._pending = snapshot.pending  # finished sequences not yet in a batch
        self._done = snapshot.taken >= self.index.num_plannable and snapshot.window > 0
        self._layouts.clear()

    def _regenerated(self, j: int) -> BatchLayout | None:
        """A forgotten batch, planned again from the latest snapshot before it. One
        regenerating planner advances with a lagging reader: catching up is linear."""
        again = self._regenerator
        if again is not None and j not in again._layouts:
            behind = j < again._num_batches
            snapshot = self.snapshots.before(j)
            if behind or (snapshot is not None and snapshot.window > again._window):
                again = None  # a snapshot is closer than where it stands
        if again is None:
            again = EpochPlanner(
                self.index, self.history, self.epoch, self.max_kept_batches, self.snapshots
            )
            self._regenerator = again
        return again.layout(j)

    # -- planning ----------------------------------------------------------------------

    def _plan_window(self) -> None:
        if self.snapshots.wants(self._window):
            self.snapshots.add(self.snapshot())
        version = self.history.at(self.epoch, self._window)
        config = version.config
        previous = self._version
        if previous is not None and previous.version != version.version:
            # Everything planned under the older config ships under it, in batches labelled
            # with its version (the last one short if need be), so every batch that says
            # version v holds only sequences v planned and honours v's limits.
            old = previous.config
            limits = BinLimits(old.seq_len, old.max_images_per_seq)
            none = np.zeros(0, np.int64)
            finished, _ = pack_window(
                none, none, limits, old.packing, self._carry, self._window, keep=0
            )
            self._add_pending(finished, self._carried)
            self._carry, self._carried = Carry(), np.zeros((0, 4), np.int64)
            while self._pending.count:
                self._emit_batch(previous, min(old.batch_size, self._pending.count))
        self._version = version
        rows = self._draw(config.pack_window)
        last = self._taken >= self.index.num_plannable
        columns = self.index.columns
        draws = plan_images(
            config, self.epoch, columns.key[rows], columns.width[rows], columns.height[rows]
        )
        drawn = np.stack([rows, draws["grid_h"], draws["grid_w"], draws["num_kept"]], axis=1)
        known = np.concatenate([self._carried, drawn])  # carried first, then this window's
        emitted, self._carry = pack_window(
            draws["num_kept"],
            rows,
            BinLimits(config.seq_len, config.max_images_per_seq),
            config.packing,
            self._carry,
            self._window,
            keep=0 if last or not config.carry_over else _carry_limit(config),
        )
        rng = np.random.default_rng([config.seed, self.epoch, self._window, _STREAM_WINDOW_ORDER])
        self._add_pending([emitted[n] for n in rng.permutation(len(emitted)).tolist()], known)
        carried = [p for _, p, _ in self._carry.waiting] + [
            p for b in self._carry.bins for p in b.items
        ]
        self._carried = _lookup(known, np.array(carried, np.int64))
        self._window += 1
        while self._pending.count >= config.batch_size:
            self._emit_batch(version, config.batch_size)
        if last:
            if self._pending.count:
                self._emit_batch(version, self._pending.count)
            self._done = True

    def _draw(self, count: int) -> np.ndarray:
        """The table rows of the next `count` plannable images of the epoch's order."""
        found: list[np.ndarray] = []
        need = min(count, self.index.num_plannable - self._taken)
        while need > 0 and self._cursor < self._order.domain:
            # A little more than needed: values past the index, and rejected images, are
            # skipped (at most half of the values fall past it).
            stop = self._cursor + 2 * need + 16
            positions = self._order.span(self._cursor, stop)
            inside = np.flatnonzero(positions < self.index.num_rows)
            rows = self.index.table_rows(positions[inside])
            good = np.flatnonzero(self.index.plannable(rows))
            if len(good) >= need:
                self._cursor += int(inside[good[need - 1]]) + 1
                good = good[:need]
            else:
                self._cursor += len(positions)
            found.append(rows[good])
            need -= len(good)
        rows = np.concatenate(found) if found else np.zeros(0, np.int64)
        self._taken += len(rows)
        return rows

    def _add_pending(self, bins: list[Bin], known: np.ndarray) -> None:
        """Finished sequences (bins of table rows) join the pending ones, with draws."""
        if not bins:
            return
        rows = np.array([r for b in bins for r in b.items], np.int64)
        found = _lookup(known, rows)
        lengths = np.array([len(b.items) for b in bins], np.int64)
        added = PendingSequences(rows, found[:, 1], found[:, 2], found[:, 3], lengths)
        self._pending = self._pending.plus(added)

    def _emit_batch(self, version: ConfigVersion, count: int) -> None:
        batch, self._pending = self._pending.split(count)
        self._layouts[self._num_batches] = BatchLayout(
            epoch=self.epoch,
            global_batch=self._num_batches,
            config_version=version.version,
            config=version.config,
            num_sequences=count,  # the last batch may be short: no padding rows
            sequence=np.repeat(np.arange(count, dtype=np.int32), batch.lengths),
            rows=batch.rows,
            key=self.index.columns.key[batch.rows],
            grid_h=batch.grid_h,
            grid_w=batch.grid_w,
            num_kept=batch.num_kept,
        )
        self._num_batches += 1


_NO_PENDING = PendingSequences.none()


def _lookup(known: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The (row, grid_h, grid_w, num_kept) entries of `known` for each of `rows`.

    For known rows [[7, 2, 3, 6], [4, 1, 1, 1]] and rows [4, 7]: [[4, 1, 1, 1],
    [7, 2, 3, 6]]. Every row is known exactly once (the shuffle is a permutation).
    """
    order = np.argsort(known[:, 0], kind="stable")
    at = order[np.searchsorted(known[order, 0], rows)]
    return known[at]


def _copied(carry: Carry) -> Carry:
    """A carry no later packing mutates (bins are filled in place)."""
    return Carry([Bin(list(b.items), b.used) for b in carry.bins], list(carry.waiting))
