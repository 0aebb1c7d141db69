"""The index, the planner and resume at scale: a synthetic index of N images.

    .venv/bin/python bench/bench_scale.py --images 20000000 --json [--work /tmp/navit-scale]

Prints (JSON with --json):

- resident_bytes_per_image: what the service holds per image once the index is loaded
  (its anonymous memory growth over N; the index file itself is memory-mapped, and
  `resident_columns_bytes_per_image` is the planner's columns alone);
- plan_images_per_s: one epoch planned straight through, one core (it also records the
  planner snapshots, one every 64 windows);
- resume_s_max, resume_peak_rss_growth_mb: a fresh planner (a restarted service, with
  the snapshots it saved) reaching the batch at 10%, 50% and 90% of the epoch, read
  from the index as the fill gets it;
- index_scan_images_per_s_1cpu / _2cpu and index_scan_scaling: the header scan of
  synthetic WebDataset shards as Ray tasks with 1 and 2 CPUs;
- index_metadata_images_per_s and index_metadata_image_bytes_read: the same shards
  sized from their .json members (img2dataset's convention): no image byte read.

The synthetic index file (about 110 bytes an image on disk) is kept in --work and reused.
Refuses to start when the machine lacks the memory it would need.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from packer.config import PackingConfig
from packer.index.build import IndexOptions, scan_groups_on_threads
from packer.index.image_index import ImageIndex
from packer.index.table import INDEX_SCHEMA
from packer.plan.batch_plan import BatchPlan
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.plan.sampling import splitmix64
from packer.plan.snapshot import SnapshotLog
from packer.sources import open_source
from packer.synthetic import imagenet_like_sizes

_CHUNK = 1 << 20


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _available_gb() -> float:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


class PeakRss:
    """The largest resident set (anonymous + file-backed) seen while the block runs."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = _memory_kb("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _memory_kb("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _memory_kb("VmRSS"))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 1024


def synthetic_index_file(path: Path, n: int) -> Path:
    """An index file of n ImageNet-like images, written a million rows at a time (ids
    and keys computed in Arrow/numpy: a 100M-row file in minutes, not hours)."""
    if path.exists():
        with pa.OSFile(str(path)) as raw:
            if pa.ipc.open_file(raw).schema.metadata.get(b"navit.images") == str(n).encode():
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = INDEX_SCHEMA.with_metadata({b"navit.images": str(n).encode()})
    tmp = path.with_suffix(".tmp")
    with pa.OSFile(str(tmp), "wb") as out, pa.ipc.new_file(out, schema) as writer:
        for start in range(0, n, _CHUNK):
            count = min(_CHUNK, n - start)
            rows = np.arange(start, start + count, dtype=np.int64)
            digits = pc.utf8_lpad(pa.array(rows).cast(pa.string()), 9, "0")
            ids = pc.binary_join_element_wise("synthetic/", digits, ".jpg", "")
            widths, heights = imagenet_like_sizes(count, seed=start // _CHUNK)
            with np.errstate(over="ignore"):
                keys = splitmix64(rows.astype(np.uint64))
            nulls = pa.nulls(count, pa.string())
            minus = pa.array(np.full(count, -1, np.int64))
            table = pa.table(
                [
                    ids,
                    ids,
                    minus,
                    minus,
                    minus,
                    pa.array(rows % 1000),
                    pa.array(widths),
                    pa.array(heights),
                    pa.array(keys),
                    nulls,
                    nulls,
                    nulls,
                ],
                schema=INDEX_SCHEMA,
            )
            writer.write_table(table, max_chunksize=1 << 16)
    tmp.rename(path)
    return path


def bench_planning(index: ImageIndex, config: PackingConfig) -> dict:
    history = ConfigHistory.start(config)
    log = SnapshotLog()
    planner = EpochPlanner(index, history, 0, snapshots=log)
    started = time.perf_counter()
    batches = planner.num_batches()
    elapsed = time.perf_counter() - started
    snapshot_bytes = sum(len(s.to_bytes()) for s in log.after(-1))
    resumes = {}
    for depth in (0.1, 0.5, 0.9):
        j = int(batches * depth)
        with PeakRss() as rss:
            started = time.perf_counter()
            fresh = EpochPlanner(index, history, 0, snapshots=log)  # a restarted service
            plan = fresh.plan(j)
            seconds = time.perf_counter() - started
        assert isinstance(plan, BatchPlan) and plan.global_batch == j
        resumes[str(depth)] = {"s": round(seconds, 3), "rss_growth_mb": round(rss.growth_mb, 1)}
        del fresh
    return {
        "plan_images_per_s": round(index.num_plannable / elapsed),
        "plan_s": round(elapsed, 2),
        "batches": batches,
        "snapshots": len(log),
        "snapshot_bytes_total": snapshot_bytes,
        "resume": resumes,
        "resume_s_max": max(r["s"] for r in resumes.values()),
        "resume_peak_rss_growth_mb": max(r["rss_growth_mb"] for r in resumes.values()),
    }


def _jpeg_blobs(count: int, seed: int = 0) -> list[tuple[int, int, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        width, height = int(rng.integers(64, 640)), int(rng.integers(64, 640))
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        blobs.append((width, height, out.getvalue()))
    return blobs


def synthetic_shards(root: Path, shards: int, per_shard: int) -> Path:
    """WebDataset shards of small JPEGs, each sample with .cls and an img2dataset .json."""
    if len(list(root.glob("*.tar"))) == shards:
        return root
    root.mkdir(parents=True, exist_ok=True)
    blobs = _jpeg_blobs(64)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(per_shard):
                width, height, data = blobs[(s * per_shard + i) % len(blobs)]
                meta = json.dumps({"width": width, "height": height}).encode()
                for name, payload in (
                    (f"{i:08d}.jpg", data),
                    (f"{i:08d}.cls", str(i % 10).encode()),
                    (f"{i:08d}.json", meta),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def bench_scan(root: Path) -> dict:
    import ray

    from packer.pipeline import init_ray, scan_groups_on_ray

    groups = open_source(str(root)).file_groups()
    for shard in root.glob("*.tar"):  # a warm page cache for every run alike
        shard.read_bytes()
    headers = IndexOptions(metadata_sizes=False)
    out: dict = {}
    for cpus in (1, 2):
        init_ray(num_cpus=cpus)
        list(scan_groups_on_ray(groups[:2], headers))  # workers started and warm
        started = time.perf_counter()
        scans = list(scan_groups_on_ray(groups, headers))
        elapsed = time.perf_counter() - started
        images = sum(s.table.num_rows for s in scans)
        out[f"index_scan_images_per_s_{cpus}cpu"] = round(images / elapsed)
        if cpus == 2:
            started = time.perf_counter()
            scans = list(scan_groups_on_ray(groups, IndexOptions()))
            elapsed = time.perf_counter() - started
            out["index_metadata_images_per_s"] = round(images / elapsed)
            out["index_metadata_image_bytes_read"] = sum(s.image_bytes_read for s in scans)
        ray.shutdown()
    out["index_scan_scaling"] = round(
        out["index_scan_images_per_s_2cpu"] / out["index_scan_images_per_s_1cpu"], 2
    )
    started = time.perf_counter()
    threads = list(scan_groups_on_threads(groups, headers, num_threads=8))
    out["index_scan_images_per_s_threads_one_process"] = round(
        sum(s.table.num_rows for s in threads) / (time.perf_counter() - started)
    )
    out["index_scan_images"] = images
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/navit-scale"))
    parser.add_argument("--scan-shards", type=int, default=32)
    parser.add_argument("--scan-per-shard", type=int, default=1000)
    parser.add_argument("--no-scan", action="store_true", help="skip the header-scan figures")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    n = args.images
    # The planner's columns, the epoch's transient windows and Python: about 40 B/image
    # plus 1.5 GB; the mapped file's pages are page cache the kernel may drop.
    need_gb = n * 40 / 2**30 + 1.5
    if _available_gb() < need_gb:
        raise SystemExit(f"needs about {need_gb:.1f} GiB available, {_available_gb():.1f} is")
    started = time.perf_counter()
    path = args.work / f"index-{n}.arrow"
    # Written by a child process: this one's memory then holds nothing of the writing,
    # and its growth from here on is what loading and planning take.
    writer = multiprocessing.get_context("spawn").Process(
        target=synthetic_index_file, args=(path, n)
    )
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise SystemExit(f"writing the synthetic index failed ({writer.exitcode})")
    written_s = time.perf_counter() - started
    anon_before = _memory_kb("RssAnon")
    started = time.perf_counter()
    index = ImageIndex.open(path)
    _ = index.num_plannable
    open_s = time.perf_counter() - started
    anon_growth = (_memory_kb("RssAnon") - anon_before) * 1024
    result = {
        "images": n,
        "index_file_bytes_per_image": round(path.stat().st_size / n, 1),
        "index_file_written_s": round(written_s, 1),
        "index_open_s": round(open_s, 2),
        "resident_bytes_per_image": round(anon_growth / n, 2),
        "resident_columns_bytes_per_image": round(index.columns.nbytes / n, 2),
    }
    result.update(bench_planning(index, PackingConfig()))
    result["rss_after_planning_gb"] = round(_memory_kb("VmRSS") / 2**20, 2)
    if not args.no_scan:
        root = synthetic_shards(args.work / "shards", args.scan_shards, args.scan_per_shard)
        result.update(bench_scan(root))
    result["cpu_count"] = os.cpu_count()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:48s} {value}")


if __name__ == "__main__":
    main()
