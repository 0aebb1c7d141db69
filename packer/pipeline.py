"""The Ray edge of the packer: run the header scan and the fill step on Ray workers. The
only module here that imports Ray.

The index's header scan (`scan_groups_on_ray`): one Ray task per file group of the source
(packer.index.build.scan_group), so building an index scales with the cluster.

Two ways in, one fill function (`packer.fill.fill_batch`), both on Ray tasks:
- `pack_to_dir`: whole epochs into a packed folder (`navit pack`). The planner decides
  every batch, so each task fills and writes a few plans (`fill_and_write`, as many as
  fill in about 0.2 s) and reports only what it wrote; 2 tasks per CPU are pending, and
  the driver takes whichever ends first: no ordering to wait on, the files say where
  each batch goes.
- `stream_filled`: an ordered, bounded stream of filled batches for the service. The
  plans come lazily from a planner (so a config change applies at the next unplanned
  window), and at most `max_in_flight` batches are being filled or waiting to be read:
  a slow reader stops new work instead of growing a buffer.

Why tasks, not Ray Data, for the pack: the planner has decided every batch, so Ray
Data's streaming executor has nothing to schedule and costs the driver and Ray's
processes per task; on 2 CPUs our tuned Ray Data path reached 0.77-0.88x of a plain
process pool filling the same plans, plain Ray Data 0.37-0.41x (bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


def pack_to_dir(
    index: ImageIndex,
    history: ConfigHistory,
    out_dir: str | Path,
    epochs: int = 1,
    on_batch: Callable[[int, PackingStats], None] | None = None,
    concurrency: int | None = None,
    ledger: RejectLedger | None = None,
) -> PackingStats:
    """Plan and fill `epochs` epochs into a packed folder on Ray tasks; returns the
    delivered stats. `out_dir` must be visible to every Ray worker (local, or shared).

    The planner decides every batch, so each task fills and writes a few BatchPlans
    (`_fill_and_write_epoch`) and the driver only merges what the tasks report, in the
    order they end. `on_batch` is
    called with each written batch's global index and the stats so far (a progress
    display reads them); `concurrency` caps the fill tasks pending at once (default: 2
    per CPU of the cluster, so a CPU that finishes one has the next at hand).

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
            for written in _fill_and_write_epoch(planned, out, concurrency):
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
    planned: EpochPlan, out: Path, concurrency: int | None
) -> Iterator[WrittenBatch]:
    """Every batch of the epoch filled and written by Ray tasks, as the tasks end.

    Plans are made lazily, so the first tasks start once the first window is planned. A
    task takes one plan until the first tasks have timed the fill, then as many plans as
    fill in about `_TASK_SECONDS` (at most `_MAX_PLANS_PER_TASK`): a Ray task costs
    milliseconds of CPU whatever it does (about 2 ms for a no-op), and one plan of small
    photos a task held the pack to 0.84-0.89x of a process pool, while next to a plan of
    camera JPEGs (over 0.5 s) it is nothing (bench/RESULTS.md). For 3000 photos at 40 ms
    a plan: 4 tasks of 1 plan, then tasks of 4-5 plans.
    """
    remote_fill = _remote_fill_plans()
    if concurrency is None:
        concurrency = 2 * max(int(ray.cluster_resources().get("CPU", 1)), 1)
    plans = planned.planner.iter_plans()
    plans_per_task = 1
    pending: list[ray.ObjectRef] = []
    while True:
        while len(pending) < concurrency:
            group = list(itertools.islice(plans, plans_per_task))
            if not group:
                break
            pending.append(remote_fill.remote(group, out))
        if not pending:
            return
        done, pending = ray.wait(pending, num_returns=1)
        filled: FilledPlans = ray.get(done[0])
        plans_per_task = _plans_per_task(filled.seconds / len(filled.written))
        yield from filled.written


_TASK_SECONDS = 0.2
_MAX_PLANS_PER_TASK = 8


def _plans_per_task(seconds_per_plan: float) -> int:
    """Plans for a task of about _TASK_SECONDS: 40 ms a plan gives 5, 0.5 s gives 1."""
    wanted = round(_TASK_SECONDS / max(seconds_per_plan, 1e-6))
    return min(max(wanted, 1), _MAX_PLANS_PER_TASK)


@dataclass(frozen=True)
class FilledPlans:
    """What one fill task reports: each plan's WrittenBatch, and the seconds it took."""

    written: list[WrittenBatch]
    seconds: float


def fill_and_write_plans(plans: list[BatchPlan], out: Path) -> FilledPlans:
    """fill_and_write each plan in turn: the unit of work of `navit pack` on a worker."""
    started = time.perf_counter()
    written = [fill_and_write(plan, out) for plan in plans]
    return FilledPlans(written, time.perf_counter() - started)


@functools.cache
def _remote_fill_plans() -> ray.remote_function.RemoteFunction:
    """One remote function per process, so Ray exports it once, not once an epoch.
    Explicit retries: a task on a node that dies runs again and writes the same files."""
    return ray.remote(num_cpus=1, max_retries=3)(fill_and_write_plans)


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
