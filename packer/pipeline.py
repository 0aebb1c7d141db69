"""The Ray edge of the packer: run the fill step on Ray workers. The only module here
that imports Ray.

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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from packer.contract.packed_folder import batch_path, write_batch_file, write_ipc_file
from packer.contract.schema import to_record_batch
from packer.fill.batch import fill_batch
from packer.image.notes import ImageNote
from packer.index.reject_ledger import RejectLedger
from packer.index.table import header_notes, header_rejects, index_skipped
from packer.plan.history import ConfigHistory
from packer.plan.planner import BatchPlan, EpochPlanner
from packer.plan.stats import PackingStats


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
    batch: int  # global batch index within the epoch
    config_version: int
    ipc: bytes
    rejected: list[tuple[str, str, str]]  # (image_id, reason, detail)
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
        batch=plan.batch,
        config_version=plan.config_version,
        ipc=_ipc_file_bytes(to_record_batch(result.batch)),
        rejected=result.rejected,
        notes=result.notes,
    )


def _fill_and_write(block: dict[str, np.ndarray], out_dir: str) -> dict[str, np.ndarray]:
    """Ray Data map: fill each plan of the block, write its file, return only its stats.

    Writing on the worker keeps the multi-MB batches off the driver's copies and writes.
    Plans and stats travel pickled, as bytes: given objects, Ray Data pickles each one
    several times and formats its numpy arrays with repr() while inferring an Arrow type.
    What each of these choices measured: see bench/RESULTS.md.
    """
    stats, rejected, notes, batches = [], [], [], []
    for pickled in block["plan"]:
        plan: BatchPlan = pickle.loads(pickled)
        result = fill_batch(plan)
        record_batch = to_record_batch(result.batch)
        path = batch_path(Path(out_dir), plan.epoch, plan.batch)
        write_batch_file(path, record_batch)
        batch_stats = PackingStats()
        batch_stats.add_filled(
            plan, result.batch, result.rejected_reasons, [n.kind for n in result.notes]
        )
        stats.append(pickle.dumps(batch_stats))
        rejected.append(json.dumps(result.rejected))
        notes.append(json.dumps([note.to_dict() for note in result.notes]))
        batches.append(plan.batch)
    return {
        "batch": np.array(batches, np.int64),
        "stats": np.array(stats, dtype=object),
        "rejected": np.array(rejected, dtype=object),
        "notes": np.array(notes, dtype=object),
    }


def stream_filled(plans: Iterable[BatchPlan], max_in_flight: int = 4) -> Iterator[EncodedBatch]:
    """Fill plans on Ray tasks, yielding in order with at most `max_in_flight` pending."""
    # Explicit retries (Ray's default today): a fill task on a node that dies runs again.
    remote_fill = ray.remote(num_cpus=1, max_retries=3)(fill_to_ipc)
    pending: deque = deque()
    source = iter(plans)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_in_flight:
            plan = next(source, None)
            if plan is None:
                exhausted = True
            else:
                pending.append(remote_fill.remote(plan))
        if not pending:
            return
        yield ray.get(pending.popleft())


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
    index: pa.Table,
    history: ConfigHistory,
    out_dir: str | Path,
    epochs: int = 1,
    on_batch: Callable[[int, PackingStats], None] | None = None,
    concurrency: int | None = None,
    plans_per_block: int | None = None,
    ledger: RejectLedger | None = None,
) -> PackingStats:
    """Plan and fill `epochs` epochs into Arrow IPC files with Ray Data; returns the
    delivered stats. `out_dir` must be visible to every Ray worker (local, or shared).

    The planner decides every batch up front, so the dataset is one item per BatchPlan;
    workers fill and write, and the driver only merges stats. `plans_per_block` (default:
    up to 4 while every CPU still gets 8 blocks) trades Ray Data's per-task overhead
    against balance (the rates of 1, 2 and 4: see bench/RESULTS.md). `on_batch` is called
    with each written batch's index and the stats so far (a progress display reads
    them); `concurrency` caps the fill tasks at once.

    Writes `rejected.jsonl` (one line per rejected image and epoch: epoch, image_id,
    reason, detail) and `notes.jsonl` (one line per Pillow warning: the header scan's
    once with "stage": "header", the fill's per epoch with "stage": "decode"), and
    leaves `stats.json` to the caller. Images the fill rejects are recorded in `ledger`
    (default: the index's own, packer.reject_ledger) and left out from the next epoch on;
    those it knew before this pack are left out of every epoch.
    """
    import ray.data

    _ray_data_console_like_ray()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    context = ray.data.DataContext.get_current()
    context.op_resource_reservation_enabled = False
    context.enable_progress_bars = False
    ledger = ledger if ledger is not None else RejectLedger.for_index(index)
    job_start = len(ledger)  # known before this pack: left out of every epoch
    stats = PackingStats()
    stats.add_skipped(index_skipped(index))
    started = time.perf_counter()
    with (
        open(out / "rejected.jsonl", "w") as rejected_log,
        open(out / "notes.jsonl", "w") as notes_log,
    ):
        for note in header_notes(index):
            notes_log.write(json.dumps({"stage": "header", **note.to_dict()}) + "\n")
        for epoch in range(epochs):
            planned = ledger.apply(index, epoch, job_start)
            rejects = header_rejects(planned)
            stats.add_rejected([reason for _, reason, _ in rejects])
            for image_id, reason, detail in rejects:
                line = {"epoch": epoch, "image_id": image_id, "reason": reason, "detail": detail}
                rejected_log.write(json.dumps(line) + "\n")
            plans = list(EpochPlanner(planned, history, epoch).iter_batches())
            if not plans:
                continue
            per_block = plans_per_block or _auto_plans_per_block(len(plans))
            dataset = ray.data.from_items(
                [{"plan": pickle.dumps(p, protocol=5)} for p in plans],
                override_num_blocks=-(-len(plans) // per_block),
            ).map_batches(
                _fill_and_write,
                batch_size=None,
                batch_format="numpy",
                fn_kwargs={"out_dir": str(out)},
                concurrency=concurrency,
            )
            fill_rejects = []
            for row in dataset.iter_rows():
                stats.merge(pickle.loads(row["stats"]))
                for image_id, reason, detail in json.loads(row["rejected"]):
                    fill_rejects.append((image_id, reason, detail))
                    line = {"epoch": epoch, "image_id": image_id, "reason": reason}
                    rejected_log.write(json.dumps({**line, "detail": detail}) + "\n")
                for note in json.loads(row["notes"]):
                    line = {"epoch": epoch, "stage": "decode", **note}
                    notes_log.write(json.dumps(line) + "\n")
                if on_batch is not None:
                    on_batch(int(row["batch"]), stats)
            # Epochs up to this one are planned: what its fill found applies from the next.
            ledger.record(sorted(fill_rejects), effective_epoch=epoch + 1)
    stats.elapsed_s = time.perf_counter() - started
    return stats
