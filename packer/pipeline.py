"""The Ray edge of the packer: run the fill step on Ray workers. The only module here
that imports Ray.

Two ways in, one fill function (`packer.fill.fill_batch`):
- `pack_to_dir`: whole epochs with Ray Data (`navit pack`). The planner has already
  decided every batch, so the dataset is the epoch's plans, in blocks that shrink
  towards the end of the epoch (`fill_blocks`), mapped by the fill; workers write the
  files. When each CPU has only a few plans, the last ones are filled in parts of rows
  (`BatchPlan.rows`) that the driver stacks, so no CPU idles through the last batch.
- `stream_filled`: an ordered, bounded stream of filled batches for the service, with
  Ray tasks. The plans come lazily from a planner (so a config change applies at the
  next unplanned window), and at most `max_in_flight` batches are being filled or
  waiting to be read: a slow reader stops new work instead of growing a buffer.

Ray Data's default resource reservation held the map to one of two CPUs on these
machines ("backpressured: tasks(ResourceBudget)" in its log), so it is turned off, and
`batch_size=None` hands each task its whole block.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from packer.fill import FillResult, fill_batch
from packer.index import header_rejects
from packer.plan import BatchPlan, ConfigHistory, EpochPlanner
from packer.schema import PackedBatch, concat_batches, from_record_batch, to_record_batch
from packer.stats import PackingStats


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start an embedded local Ray (once per process)."""
    if ray.is_initialized():
        return
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Workers import packer from this checkout; keep Ray's logs out of the terminal.
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(num_cpus=num_cpus, **kwargs)


@dataclass(frozen=True)
class FilledBatch:
    """A filled batch as Arrow IPC file bytes, with what the fill rejected."""

    epoch: int
    batch: int
    config_version: int
    ipc: bytes
    rejected: list[tuple[str, str, str]]  # (image_id, reason, detail)

    def record_batch(self) -> pa.RecordBatch:
        return pa.ipc.open_file(pa.py_buffer(self.ipc)).get_batch(0)

    def packed(self) -> PackedBatch:
        return from_record_batch(self.record_batch())


def _write_ipc_file(sink: pa.NativeFile, record_batch: pa.RecordBatch) -> None:
    """One batch as an Arrow IPC file: what `navit pack` writes and the service sends."""
    with pa.ipc.new_file(sink, record_batch.schema) as writer:
        writer.write_batch(record_batch)


def _ipc_file_bytes(record_batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    _write_ipc_file(sink, record_batch)
    return sink.getvalue().to_pybytes()


def fill_to_ipc(plan: BatchPlan) -> FilledBatch:
    """Fill one plan and serialise it: the unit of work on a Ray worker."""
    result = fill_batch(plan)
    return FilledBatch(
        epoch=plan.epoch,
        batch=plan.batch,
        config_version=plan.config_version,
        ipc=_ipc_file_bytes(to_record_batch(result.batch)),
        rejected=result.rejected,
    )


def _write_batch(out_dir: Path, epoch: int, batch: int, packed: PackedBatch) -> None:
    path = batch_path(out_dir, epoch, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".arrow.partial")  # a crash leaves no half-written batch
    with pa.OSFile(str(partial), "wb") as sink:
        _write_ipc_file(sink, to_record_batch(packed))
    partial.replace(path)


def _fill_and_write(block: dict[str, np.ndarray], out_dir: str) -> dict[str, np.ndarray]:
    """Ray Data map: fill each unit of the block; write a whole plan's file and return
    its stats, or return a part's filled rows for the driver to stack and write.

    Writing on the worker keeps the multi-MB batches off the driver (on these 2-core
    machines the driver's copies and writes cost about a sixth of the throughput); only
    the few split plans at the end of an epoch come back whole.
    Plans and stats travel pickled, as bytes: given objects, Ray Data pickles each one
    several times and formats its numpy arrays with repr() while inferring an Arrow type
    (py-spy: about 0.1 s of driver time before the first task of a 3000-image epoch).
    """
    stats, rejected, filled = [], [], []
    for pickled, parts in zip(block["plan"], block["parts"].tolist(), strict=True):
        plan: BatchPlan = pickle.loads(pickled)
        result = fill_batch(plan)
        rejected.append(json.dumps(result.rejected))
        if parts > 1:
            filled.append(pickle.dumps(result.batch, protocol=5))
            stats.append(b"")
            continue
        _write_batch(Path(out_dir), plan.epoch, plan.batch, result.batch)
        batch_stats = PackingStats()
        batch_stats.add_filled(plan, result.batch, result.rejected_reasons)
        stats.append(pickle.dumps(batch_stats))
        filled.append(b"")
    return {
        "batch": block["batch"],
        "part": block["part"],
        "parts": block["parts"],
        "stats": np.array(stats, dtype=object),
        "rejected": np.array(rejected, dtype=object),
        "filled": np.array(filled, dtype=object),
    }


def stream_filled(plans: Iterable[BatchPlan], max_in_flight: int = 4) -> Iterator[FilledBatch]:
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


def batch_path(out_dir: Path, epoch: int, batch: int) -> Path:
    """Where `navit pack` writes a batch: OUT/epoch-000/batch-000012.arrow."""
    return out_dir / f"epoch-{epoch:03d}" / f"batch-{batch:06d}.arrow"


SPLIT_BELOW_PLANS_PER_CPU = 16


@dataclass(frozen=True)
class FillUnit:
    """One fill task's share of an epoch: rows start..stop-1 of plan `plan` (a position
    in the epoch's plan list), which is split into `parts` units (1: the whole plan)."""

    plan: int
    start: int
    stop: int
    part: int = 0
    parts: int = 1


def fill_blocks(
    num_rows: list[int], cpus: int, max_plans_per_block: int = 4
) -> list[list[FillUnit]]:
    """Group an epoch's plans (given by their row counts) into Ray Data blocks, one fill
    task each, so that the CPUs finish together.

    Guided scheduling: a block takes ceil(remaining plans / (4 * cpus)) plans, at most
    `max_plans_per_block`: large blocks first (Ray Data costs the driver about 10 ms of
    CPU per task), single plans at the end. With fewer than `SPLIT_BELOW_PLANS_PER_CPU`
    plans per CPU, one plan is a large share of a CPU's work (600 camera JPEGs: 17
    plans of about 1 s each on 2 CPUs), so the last `cpus` plans are split into 4 parts
    of rows and the `cpus` before them into 2: the epoch then does not end with one CPU
    filling a whole batch while the others idle.
    For 10 plans of 8 rows on 2 CPUs: blocks [0, 1], [2], [3], [4], [5]; then plans 6
    and 7 as rows 0-3 and 4-7; then plans 8 and 9 as rows 0-1, 2-3, 4-5 and 6-7.
    """
    if cpus < 1 or max_plans_per_block < 1:
        raise ValueError("cpus and max_plans_per_block must be at least 1")
    n = len(num_rows)
    split_from = max(n - 2 * cpus, 0) if n < SPLIT_BELOW_PLANS_PER_CPU * cpus else n
    blocks: list[list[FillUnit]] = []
    i = 0
    while i < split_from:
        size = min(-(-(n - i) // (4 * cpus)), max_plans_per_block, split_from - i)
        blocks.append([FillUnit(j, 0, num_rows[j]) for j in range(i, i + size)])
        i += size
    for j in range(split_from, n):
        parts = min(2 if j < n - cpus else 4, num_rows[j])
        bounds = np.linspace(0, num_rows[j], parts + 1).round().astype(int).tolist()
        for k in range(parts):
            blocks.append([FillUnit(j, bounds[k], bounds[k + 1], k, parts)])
    return blocks


def _block_table(plans: list[BatchPlan], units: list[FillUnit]) -> pa.Table:
    pickled = []
    for u in units:
        plan = plans[u.plan]
        part = plan if u.parts == 1 else plan.rows(u.start, u.stop)
        pickled.append(pickle.dumps(part, protocol=5))
    return pa.table(
        {
            "plan": pa.array(pickled, pa.binary()),
            "batch": pa.array([plans[u.plan].batch for u in units], pa.int64()),
            "part": pa.array([u.part for u in units], pa.int32()),
            "parts": pa.array([u.parts for u in units], pa.int32()),
        }
    )


def pack_to_dir(
    index: pa.Table,
    history: ConfigHistory,
    out_dir: str | Path,
    epochs: int = 1,
    on_batch: Callable[[int], None] | None = None,
    concurrency: int | None = None,
    plans_per_block: int | None = None,
) -> PackingStats:
    """Plan and fill `epochs` epochs into Arrow IPC files with Ray Data; returns the
    delivered stats. `out_dir` must be visible to every Ray worker (local, or shared).

    The planner decides every batch up front, so the dataset is the epoch's plans,
    grouped into blocks by `fill_blocks` (`plans_per_block` caps a block, default 4);
    workers fill and write, and the driver merges stats and stacks the parts of the few
    plans split at the end of an epoch. Writes `rejected.jsonl` (one line per rejected
    image and epoch, with its reason) and leaves `stats.json` to the caller. `on_batch`
    is called with each written batch's index; `concurrency` caps the fill tasks at once.
    """
    import ray.data

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    context = ray.data.DataContext.get_current()
    context.op_resource_reservation_enabled = False
    context.enable_progress_bars = False
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    if concurrency:
        cpus = min(cpus, concurrency)
    rejects = header_rejects(index)
    stats = PackingStats()
    started = time.perf_counter()
    with open(out / "rejected.jsonl", "w") as rejected_log:
        for epoch in range(epochs):
            stats.add_rejected([reason for _, reason in rejects])
            for image_id, reason in rejects:
                line = {"epoch": epoch, "image_id": image_id, "reason": reason}
                rejected_log.write(json.dumps(line) + "\n")
            plans = list(EpochPlanner(index, history, epoch).iter_batches())
            if not plans:
                continue
            blocks = fill_blocks([p.num_sequences for p in plans], cpus, plans_per_block or 4)
            dataset = ray.data.from_arrow([_block_table(plans, units) for units in blocks])
            dataset = dataset.map_batches(
                _fill_and_write,
                batch_size=None,
                batch_format="numpy",
                fn_kwargs={"out_dir": str(out)},
                concurrency=concurrency,
            )
            by_batch = {plan.batch: plan for plan in plans}
            parts_filled: dict[int, dict[int, FillResult]] = {}
            for row in dataset.iter_rows():
                batch, parts = int(row["batch"]), int(row["parts"])
                rejected = [tuple(r) for r in json.loads(row["rejected"])]
                for image_id, reason, detail in rejected:
                    line = {"epoch": epoch, "image_id": image_id, "reason": reason}
                    rejected_log.write(json.dumps({**line, "detail": detail}) + "\n")
                if parts == 1:
                    stats.merge(pickle.loads(row["stats"]))
                else:
                    filled = parts_filled.setdefault(batch, {})
                    filled[int(row["part"])] = FillResult(pickle.loads(row["filled"]), rejected)
                    if len(filled) < parts:
                        continue
                    del parts_filled[batch]
                    results = [filled[k] for k in range(parts)]
                    packed = concat_batches([r.batch for r in results])
                    _write_batch(out, epoch, batch, packed)
                    reasons = [reason for r in results for reason in r.rejected_reasons]
                    stats.add_filled(by_batch[batch], packed, reasons)
                if on_batch is not None:
                    on_batch(batch)
    stats.elapsed_s = time.perf_counter() - started
    return stats
