"""The Ray edge of the packer: run the header scan and the fill step on Ray workers. The
only module here that imports Ray.

The index's header scan (`scan_groups_on_ray`): one Ray task per file group of the source
(packer.index.build.scan_group), so building an index scales with the cluster.

Two ways in, one fill function (`packer.fill.fill_batch`):
- `pack_to_dir`: whole epochs with Ray Data (`navit pack`). The planner has already
  decided every batch, so the dataset is simply one item per BatchPlan, mapped by the
  fill; each block holds one plan so both CPUs stay busy, and workers write the files.
- `stream_filled`: an ordered, bounded stream of filled batches for the service, with
  Ray tasks. The plans come lazily from a planner (so a config change applies at the
  next unplanned window), and at most `max_in_flight` batches are being filled or
  waiting to be read: a slow reader stops new work instead of growing a buffer.

Ray Data's default resource reservation held the map to one of two CPUs on these
machines ("backpressured: tasks(ResourceBudget)" in its log), so it is turned off, and
`batch_size=None` hands each task its whole one-plan block.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from packer.contract.packed_folder import write_ipc_file
from packer.contract.schema import to_record_batch
from packer.fill.batch import WrittenBatch, fill_and_write, fill_batch
from packer.fill.bounded import in_order
from packer.image.notes import ImageNote
from packer.image.reject import Reject
from packer.index.build import GroupScan, IndexOptions, scan_group
from packer.index.image_index import ImageIndex, header_notes
from packer.index.reject_ledger import RejectLedger
from packer.index.table import index_skipped
from packer.plan.batch_plan import BatchPlan
from packer.plan.epoch import EpochPlan, plan_epoch
from packer.plan.history import ConfigHistory
from packer.plan.stats import PackingStats
from packer.sources import FileGroup


def init_ray(
    address: str | None = None, num_cpus: int | None = None, verbose: bool = False
) -> None:
    """Join the cluster at `address`, or start an embedded local Ray that listens on
    loopback only (once per process). Ray's start-up lines (INFO/WARNING) are shown only
    when `verbose`; its processes log to files under its session folder either way.

    Loopback: Ray (2.60) binds its gRPC servers (GCS, raylet, workers, driver) and the
    runtime-env agent to the node IP, and for a local node that is the address seen from
    outside unless Ray thinks clusters are off (its RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    switch), when it is 127.0.0.1. `ray.init(_node_ip_address="127.0.0.1")` does not
    help: Ray turns a loopback address back into the machine's. So for the embedded Ray
    the switch is set while it starts; joining a cluster leaves it alone.
    """
    if ray.is_initialized():
        return
    kwargs: dict = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if address:
        ray.init(address=address, **kwargs)
        return
    # Workers import packer from this checkout; keep Ray's logs out of the terminal.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with _local_ray_on_loopback():
        ray.init(num_cpus=num_cpus, **kwargs)


@contextmanager
def _local_ray_on_loopback() -> Iterator[None]:
    """Ray's "no clusters" switch, on while the embedded Ray starts (see init_ray)."""
    from ray._private import ray_constants  # the switch has no public spelling

    previous_env = os.environ.get(_RAY_CLUSTER_SWITCH)
    previous = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_SWITCH] = "0"  # for the processes it starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: set it in this one too
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
        if previous_env is None:
            os.environ.pop(_RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[_RAY_CLUSTER_SWITCH] = previous_env


_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class EncodedBatch:
    """A filled batch as it leaves a Ray worker: the packed batch as Arrow IPC file bytes
    (serialised on the worker, read zero-copy by the driver), which global batch of
    which epoch it is, and what the fill rejected."""

    epoch: int
    global_batch: int  # the batch's index in the epoch
    config_version: int
    ipc: bytes
    rejected: list[Reject]
    notes: list[ImageNote] = field(default_factory=list)  # Pillow's warnings, per image

    def record_batch(self) -> pa.RecordBatch:
        return pa.ipc.open_file(pa.py_buffer(self.ipc)).get_batch(0)


def _ipc_file_bytes(record_batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    write_ipc_file(sink, record_batch)
    return sink.getvalue().to_pybytes()


def fill_to_ipc(plan: BatchPlan) -> EncodedBatch:
    """Fill one plan and serialise it: the unit of work on a Ray worker."""
    result = fill_batch(plan)
    return EncodedBatch(
        epoch=plan.epoch,
        global_batch=plan.global_batch,
        config_version=plan.config_version,
        ipc=_ipc_file_bytes(to_record_batch(result.packed)),
        rejected=result.rejected,
        notes=result.notes,
    )


def _fill_and_write_block(block: dict[str, np.ndarray], out_dir: str) -> dict[str, np.ndarray]:
    """Ray Data map: fill and write each plan of the block (packer.fill.batch), return
    only what was written (stats, rejects, notes), pickled.

    Writing on the worker keeps the multi-MB batches off the driver's copies and writes.
    Plans and results travel pickled, as bytes: given objects, Ray Data pickles each one
    several times and formats its numpy arrays with repr() while inferring an Arrow type.
    What each of these choices measured: see bench/RESULTS.md.
    """
    written = [
        pickle.dumps(fill_and_write(pickle.loads(pickled), Path(out_dir)), protocol=5)
        for pickled in block["plan"]
    ]
    return {"written": np.array(written, dtype=object)}


def stream_filled(plans: Iterable[BatchPlan], max_in_flight: int = 4) -> Iterator[EncodedBatch]:
    """Fill plans on Ray tasks, yielding in order with at most `max_in_flight` pending
    (packer.fill.bounded)."""
    # Explicit retries (Ray's default today): a fill task on a node that dies runs again.
    remote_fill = ray.remote(num_cpus=1, max_retries=3)(fill_to_ipc)
    return in_order(plans, remote_fill.remote, ray.get, max_in_flight)


def scan_groups_on_ray(
    groups: list[FileGroup], options: IndexOptions, max_in_flight: int | None = None
) -> Iterator[GroupScan]:
    """packer.index.build.scan_group over file groups as Ray tasks (one CPU each), in
    order, with at most `max_in_flight` (default: 4 per CPU of the cluster) pending: a
    GroupScanner for packer.index.cache.load_index. Each task lists its shard or file
    and reads only the headers its metadata does not size."""
    remote_scan = ray.remote(num_cpus=1, max_retries=3)(scan_group)
    if max_in_flight is None:
        max_in_flight = 4 * max(int(ray.cluster_resources().get("CPU", 1)), 1)
    return in_order(
        groups, lambda group: remote_scan.remote(group, options), ray.get, max_in_flight
    )


def _ray_data_console_like_ray() -> None:
    """Ray Data prints INFO lines to the terminal whatever ray.init's logging_level: give
    its console handlers the level init_ray gave Ray's logger (its log file keeps all)."""
    level = max(logging.getLogger("ray").getEffectiveLevel(), logging.INFO)
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(level)


def _auto_plans_per_block(num_plans: int) -> int:
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    return max(1, min(4, num_plans // (8 * cpus)))


def pack_to_dir(
    index: ImageIndex,
    history: ConfigHistory,
    out_dir: str | Path,
    epochs: int = 1,
    on_batch: Callable[[int, PackingStats], None] | None = None,
    concurrency: int | None = None,
    plans_per_block: int | None = None,
    ledger: RejectLedger | None = None,
) -> PackingStats:
    """Plan and fill `epochs` epochs into a packed folder with Ray Data; returns the
    delivered stats. `out_dir` must be visible to every Ray worker (local, or shared).

    The planner decides every batch up front, so the dataset is one item per BatchPlan;
    workers fill and write, and the driver only merges what they report. `plans_per_block`
    (default: up to 4 while every CPU still gets 8 blocks) trades Ray Data's per-task
    overhead against balance (the rates of 1, 2 and 4: see bench/RESULTS.md). `on_batch`
    is called with each written batch's global index and the stats so far (a progress
    display reads them); `concurrency` caps the fill tasks at once.

    Writes `rejected.jsonl` and `notes.jsonl` (see `_PackLogs`) and leaves `stats.json`
    to the caller. Images the fill rejects are recorded in `ledger` (default: the index's
    own, packer.index.reject_ledger) and left out from the next epoch on; those it knew
    before this pack are left out of every epoch.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ledger = ledger if ledger is not None else RejectLedger.for_index(index)
    job_start = len(ledger)  # known before this pack: left out of every epoch
    stats = PackingStats()
    stats.add_skipped(index_skipped(index))
    started = time.perf_counter()
    with _PackLogs(out) as logs:
        logs.header_notes(header_notes(index))
        for epoch in range(epochs):
            planned = plan_epoch(index, history, epoch, ledger, job_start)
            stats.add_rejected([r.reason for r in planned.rejected])
            logs.rejected(epoch, planned.rejected)
            fill_rejects: list[Reject] = []
            for written in _fill_and_write_epoch(planned, out, concurrency, plans_per_block):
                stats.merge(written.stats)
                logs.rejected(epoch, written.rejected)
                logs.decode_notes(epoch, written.notes)
                fill_rejects += written.rejected
                if on_batch is not None:
                    on_batch(written.global_batch, stats)
            # Epochs up to this one are planned: what its fill found applies from the next.
            ledger.record(sorted(fill_rejects), effective_epoch=epoch + 1)
    stats.elapsed_s = time.perf_counter() - started
    return stats


def _fill_and_write_epoch(
    planned: EpochPlan, out: Path, concurrency: int | None, plans_per_block: int | None
) -> Iterator[WrittenBatch]:
    """Every batch of the epoch filled and written by Ray Data workers, as reported."""
    import ray.data

    _ray_data_console_like_ray()
    context = ray.data.DataContext.get_current()
    context.op_resource_reservation_enabled = False
    context.enable_progress_bars = False
    plans = list(planned.planner.iter_plans())
    if not plans:
        return
    per_block = plans_per_block or _auto_plans_per_block(len(plans))
    dataset = ray.data.from_items(
        [{"plan": pickle.dumps(p, protocol=5)} for p in plans],
        override_num_blocks=-(-len(plans) // per_block),
    ).map_batches(
        _fill_and_write_block,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={"out_dir": str(out)},
        concurrency=concurrency,
    )
    for row in dataset.iter_rows():
        yield pickle.loads(row["written"])


class _PackLogs:
    """The pack's two logs beside its batches, one JSON line each:

    - rejected.jsonl: every rejected image per epoch, {"epoch", "image_id", "reason",
      "detail"}, both those left out before planning and those the fill rejected;
    - notes.jsonl: every Pillow warning, the header scan's once ({"stage": "header"}),
      the fill's per epoch ({"epoch", "stage": "decode"}), with "image_id", "kind",
      "detail".
    """

    def __init__(self, out: Path) -> None:
        self._rejected = open(out / "rejected.jsonl", "w")  # noqa: SIM115 - closed by __exit__
        self._notes = open(out / "notes.jsonl", "w")  # noqa: SIM115

    def __enter__(self) -> _PackLogs:
        return self

    def __exit__(self, *exc: object) -> None:
        self._rejected.close()
        self._notes.close()

    def rejected(self, epoch: int, rejects: Iterable[Reject]) -> None:
        for reject in rejects:
            self._rejected.write(json.dumps({"epoch": epoch, **reject._asdict()}) + "\n")

    def header_notes(self, notes: Iterable[ImageNote]) -> None:
        for note in notes:
            self._notes.write(json.dumps({"stage": "header", **note.to_dict()}) + "\n")

    def decode_notes(self, epoch: int, notes: Iterable[ImageNote]) -> None:
        for note in notes:
            line = {"epoch": epoch, "stage": "decode", **note.to_dict()}
            self._notes.write(json.dumps(line) + "\n")
