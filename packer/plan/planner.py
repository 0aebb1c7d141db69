"""The planner: from the index alone, decide every packed batch of an epoch. Pure, no I/O.

Per epoch: a seeded shuffle of the valid images, then window by window of `pack_window`
images: per-image draws (resolution -> patch grid -> kept tokens, see packer.sampling),
bin packing, a seeded shuffle of the window's finished sequences, and batches of
`batch_size` sequences. Global batch j goes to rank j % world_size as its batch
j // world_size (the striding of packer.contract.cursor), so a rank's stream is a pure
function of (index, config history, epoch, rank, world_size) and any batch can be
regenerated without replaying the past.

The planner decides windows lazily, so a config change recorded in the history for the
next unplanned window takes effect there (see ConfigHistory). Decoding pixels is the
fill step's job (packer.fill); nothing here reads an image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from packer.config import PackingConfig
from packer.contract.cursor import batches_per_rank, global_batch_index
from packer.plan.history import ConfigHistory, ConfigVersion
from packer.plan.packing import Bin, BinLimits, Carry, pack_window
from packer.plan.sampling import plan_images

_STREAM_EPOCH_ORDER = 0x5EED
_STREAM_WINDOW_ORDER = 0x0DE5


@dataclass(frozen=True)
class BatchPlan:
    """Everything the fill step needs to build one packed batch, without the index.

    Per-image arrays are flat over the batch in row order: `sequence[i]` is the row
    (0..num_sequences-1) image i lands in, and images of one sequence are in slot order.
    """

    epoch: int
    batch: int  # global batch index within the epoch
    config_version: int
    config: PackingConfig
    num_sequences: int  # rows in the Arrow batch; rows past the planned ones are padding
    sequence: np.ndarray  # [N] int32
    image_ids: list[str]
    uri: list[str]
    offset: np.ndarray  # [N] int64
    length: np.ndarray  # [N] int64
    row: np.ndarray  # [N] int64
    label: np.ndarray  # [N] int64
    key: np.ndarray  # [N] uint64
    grid_h: np.ndarray  # [N] int64
    grid_w: np.ndarray  # [N] int64
    num_kept: np.ndarray  # [N] int64

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def real_tokens(self) -> int:
        return int(self.num_kept.sum())

    @classmethod
    def empty(cls, epoch: int, batch: int, version: ConfigVersion) -> BatchPlan:
        """An all-padding batch: gives every rank the same batch count in an epoch."""
        zeros = np.zeros(0, np.int64)
        return cls(
            epoch=epoch,
            batch=batch,
            config_version=version.version,
            config=version.config,
            num_sequences=version.config.batch_size,
            sequence=np.zeros(0, np.int32),
            image_ids=[],
            uri=[],
            offset=zeros,
            length=zeros,
            row=zeros,
            label=zeros,
            key=np.zeros(0, np.uint64),
            grid_h=zeros,
            grid_w=zeros,
            num_kept=zeros,
        )


@dataclass(frozen=True)
class _Sequence:
    rows: np.ndarray  # index rows in slot order
    grid_h: np.ndarray
    grid_w: np.ndarray
    num_kept: np.ndarray


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
    plans are kept, and asking for an older one replays the epoch's plan from its start
    in a fresh planner (same inputs, same batches), as a trainer resuming far back needs.

    Not thread-safe: the service guards a shared planner with a lock.
    """

    def __init__(
        self, index: pa.Table, history: ConfigHistory, epoch: int, max_kept_batches: int = 4096
    ) -> None:
        if max_kept_batches < 1:
            raise ValueError(f"max_kept_batches must be positive, got {max_kept_batches}")
        self.max_kept_batches = max_kept_batches
        self.index = index
        self.history = history
        self.epoch = epoch
        errors = index.column("error").is_null().to_numpy(zero_copy_only=False)
        valid_rows = np.flatnonzero(errors)
        first = history.at(epoch, 0).config
        rng = np.random.default_rng([first.seed, epoch, _STREAM_EPOCH_ORDER])
        self._order = valid_rows[rng.permutation(len(valid_rows))]
        self._widths = index.column("width").to_numpy()
        self._heights = index.column("height").to_numpy()
        self._keys = index.column("key").to_numpy()
        self._cursor = 0  # images of self._order planned so far
        self._window = 0  # next unplanned window
        self._carry = Carry()  # what the last window left to the next
        self._version: ConfigVersion | None = None  # the version of the last planned window
        self._pending: list[_Sequence] = []  # finished sequences not yet in a batch
        self._batches: OrderedDict[int, BatchPlan] = OrderedDict()  # the latest plans
        self._num_batches = 0  # batches planned so far
        self._replay: EpochPlanner | None = None  # regenerates forgotten plans
        self._done = False
        self._images = {}  # row -> (grid_h, grid_w, num_kept) for rows not yet in a batch

    @property
    def next_window(self) -> int:
        """The first window not yet planned: where a config change would take effect."""
        return self._window

    def batch(self, j: int) -> BatchPlan | None:
        """Global batch j of the epoch, or None when the epoch has fewer batches."""
        while self._num_batches <= j and not self._done:
            self._plan_window()
        if j >= self._num_batches:
            return None
        plan = self._batches.get(j)
        if plan is None:  # forgotten to bound memory: regenerate it
            # One replay planner advances with a lagging reader, so catching up is linear.
            replay = self._replay
            if replay is None or (j < replay._num_batches and j not in replay._batches):
                replay = EpochPlanner(self.index, self.history, self.epoch, self.max_kept_batches)
                self._replay = replay
            return replay.batch(j)
        # Forget the oldest plans, never j itself: the cache holds at most max_kept_batches
        # plus the batches of the window that produced j.
        while len(self._batches) > self.max_kept_batches and next(iter(self._batches)) < j:
            self._batches.popitem(last=False)
        return plan

    def num_batches(self) -> int:
        """The epoch's batch count (plans every remaining window)."""
        while not self._done:
            self._plan_window()
        return self._num_batches

    def rank_batch(self, rank: int, world_size: int, k: int) -> BatchPlan | None:
        """Batch k of `rank`'s stream: global batch `global_batch_index(rank, world_size, k)`.

        When the epoch's batches run out part-way through a round, the ranks left
        without one get an all-padding batch, so every rank sees the same count:
        with 5 batches and 2 ranks, rank 0 gets [0, 2, 4] and rank 1 [1, 3, empty].
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        j = global_batch_index(rank, world_size, k)
        plan = self.batch(j)
        if plan is not None:
            return plan
        # Past the end: the ranks still short of their share get padding, so every rank
        # has batches_per_rank(num_batches, world_size) of them.
        if k < batches_per_rank(self._num_batches, world_size):
            # Shaped and labelled by the config that planned the epoch's last window, never
            # by a later one: a config change recorded after the epoch was planned (it
            # starts past the last window) must not alter a batch that may have been sent.
            last = self._version or self.history.at(self.epoch, 0)
            return BatchPlan.empty(self.epoch, j, last)
        return None

    def iter_rank(self, rank: int, world_size: int, start: int = 0) -> Iterator[BatchPlan]:
        k = start
        while (plan := self.rank_batch(rank, world_size, k)) is not None:
            yield plan
            k += 1

    def iter_batches(self) -> Iterator[BatchPlan]:
        j = 0
        while (plan := self.batch(j)) is not None:
            yield plan
            j += 1

    # -- planning ----------------------------------------------------------------------

    def _plan_window(self) -> None:
        version = self.history.at(self.epoch, self._window)
        config = version.config
        previous = self._version
        if previous is not None and previous.version != version.version:
            # Everything planned under the older config ships under it, in batches labelled
            # with its version (the last one short if need be), so every batch that says
            # version v holds only sequences v planned and honours v's limits.
            old = previous.config
            finished, _ = pack_window(
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                BinLimits(old.seq_len, old.max_images_per_seq),
                old.packing,
                self._carry,
                self._window,
                keep=0,
            )
            self._pending.extend(self._finish(b) for b in finished)
            self._carry = Carry()
            while self._pending:
                count = min(old.batch_size, len(self._pending))
                self._emit_batch(previous, count)
        self._version = version
        rows = self._order[self._cursor : self._cursor + config.pack_window]
        self._cursor += len(rows)
        last = self._cursor >= len(self._order)
        draws = plan_images(
            config, self.epoch, self._keys[rows], self._widths[rows], self._heights[rows]
        )
        for r, gh, gw, nk in zip(
            rows.tolist(),
            draws["grid_h"].tolist(),
            draws["grid_w"].tolist(),
            draws["num_kept"].tolist(),
            strict=True,
        ):
            self._images[r] = (gh, gw, nk)
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
        for n in rng.permutation(len(emitted)).tolist():
            self._pending.append(self._finish(emitted[n]))
        self._window += 1
        while len(self._pending) >= config.batch_size:
            self._emit_batch(version, config.batch_size)
        if last:
            if self._pending:
                self._emit_batch(version, len(self._pending))
            self._done = True

    def _finish(self, b: Bin) -> _Sequence:
        draws = np.array([self._images.pop(r) for r in b.items], dtype=np.int64).reshape(-1, 3)
        return _Sequence(np.asarray(b.items, np.int64), draws[:, 0], draws[:, 1], draws[:, 2])

    def _emit_batch(self, version: ConfigVersion, count: int) -> None:
        sequences, self._pending = self._pending[:count], self._pending[count:]
        rows = np.concatenate([s.rows for s in sequences])
        table = self.index.take(pa.array(rows))
        self._batches[self._num_batches] = BatchPlan(
            epoch=self.epoch,
            batch=self._num_batches,
            config_version=version.version,
            config=version.config,
            num_sequences=version.config.batch_size,
            sequence=np.repeat(
                np.arange(len(sequences), dtype=np.int32), [len(s.rows) for s in sequences]
            ),
            image_ids=table.column("image_id").to_pylist(),
            uri=table.column("uri").to_pylist(),
            offset=table.column("offset").to_numpy(),
            length=table.column("length").to_numpy(),
            row=table.column("row").to_numpy(),
            label=table.column("label").to_numpy(),
            key=table.column("key").to_numpy(),
            grid_h=np.concatenate([s.grid_h for s in sequences]),
            grid_w=np.concatenate([s.grid_w for s in sequences]),
            num_kept=np.concatenate([s.num_kept for s in sequences]),
        )
        self._num_batches += 1
