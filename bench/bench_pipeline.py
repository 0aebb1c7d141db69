"""Pipeline throughput: the whole Ray pipeline (plan, fill on Ray Data, Arrow files)
against the same per-image work done without Ray, all measured in one run.

    .venv/bin/python bench/bench_pipeline.py [--photos 3000] [--camera 600] [--cpus 2]

- single: one process, the best path (draft decode at reduced scale, resize, patchify);
- naive: one process, full decode then resize then patchify;
- pool: multiprocessing.Pool(cpus) doing `single`'s work;
- ours: `pack_to_dir` on a local Ray with `cpus` CPUs (planning, Ray Data, packing into
  Arrow IPC files), end to end.
Two data sets are generated once under bench/out/ (not in git): photo-sized JPEGs
(about 0.2 MP, like ImageNet) and camera-sized JPEGs (6 MP). Prints JSON with ratios.
600 camera JPEGs make a run of about 9 s; with 200 (3 s) Ray's start (about 0.2 s) and
the last block's tail on one CPU weigh about 7% more against the Pool's warm workers.
Every round runs single, naive (camera), Pool and ours back to back; each ratio is the
median over rounds of the ratio within a round.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from packer.config import PackingConfig
from packer.image.imageio import decode_resized
from packer.image.patchify import patchify
from packer.index.cache import load_index
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner

OUT = Path(__file__).parent / "out"


def _write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    target = folder / "images"
    if target.exists() and len(list(target.glob("*.jpg"))) >= count:
        return folder
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    # Smooth gradients plus noise compress like photos (not like flat colour).
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        base = np.stack(
            [
                (xx * rng.uniform(0.05, 0.3) + yy * rng.uniform(0.05, 0.3) + c * 60) % 256
                for c in range(3)
            ],
            axis=-1,
        )
        noise = rng.integers(0, 40, size=(h, w, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        portrait = i % 3 == 0
        image = Image.fromarray(pixels)
        if portrait:
            image = image.transpose(Image.Transpose.ROTATE_90)
        image.save(target / f"{i:05d}.jpg", quality=90)
    return folder


def _work_items(dataset: Path, config: PackingConfig) -> list[tuple[str, int, int]]:
    index = load_index(str(dataset))
    items = []
    for plan in EpochPlanner(index, ConfigHistory.start(config), 0).iter_plans():
        for uri, gh, gw in zip(plan.uri, plan.grid_h.tolist(), plan.grid_w.tolist(), strict=True):
            items.append((uri, gh * config.patch_size, gw * config.patch_size))
    return items


def _best_path(item: tuple[str, int, int]) -> int:
    uri, h, w = item
    image = decode_resized(Path(uri).read_bytes(), w, h)
    return patchify(image, 16).shape[0]


def _naive_path(item: tuple[str, int, int]) -> int:
    uri, h, w = item
    with Image.open(uri) as im:
        image = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
    return patchify(image, 16).shape[0]


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat: all but idle and
    iowait), so Ray's driver, raylet, GCS and workers are all counted."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Run:
    """One timed run: images per second, and CPU milliseconds per image spent by the
    machine (every process) and by this process (for ours: Ray's driver)."""

    rate: float
    machine_cpu_ms: float
    own_cpu_ms: float


def _timed(run) -> _Run:
    """Time `run()`, which returns how many images it delivered."""
    wall, busy, own = time.perf_counter(), _machine_busy_s(), time.process_time()
    images = run()
    wall = time.perf_counter() - wall
    busy, own = _machine_busy_s() - busy, time.process_time() - own
    return _Run(images / wall, 1e3 * busy / images, 1e3 * own / images)


def _single(fn, items) -> _Run:
    return _timed(lambda: len([fn(item) for item in items]))


def _pool_run(pool, items) -> _Run:
    return _timed(lambda: len(pool.map(_best_path, items, chunksize=8)))


def _ours_run(index, config: PackingConfig, plans_per_block: int | None) -> _Run:
    from packer.pipeline import pack_to_dir

    history = ConfigHistory.start(config)
    with tempfile.TemporaryDirectory() as out:
        return _timed(
            lambda: pack_to_dir(index, history, out, plans_per_block=plans_per_block).images_packed
        )


def _median_ratio(ratios) -> float:
    return round(statistics.median(ratios), 3)


def _median_ms(values) -> float:
    return round(statistics.median(values), 3)


def measure(
    dataset: Path,
    config: PackingConfig,
    cpus: int,
    naive: bool,
    rounds: int,
    plans_per_block: int | None = None,
) -> dict:
    """Median rates over `rounds` interleaved rounds (this machine is shared and noisy)."""
    items = _work_items(dataset, config)
    index = load_index(str(dataset))
    result: dict = {"images": len(items)}
    singles, pools, ours_runs, naives = [], [], [], []
    with multiprocessing.get_context("spawn").Pool(cpus) as pool:
        pool.map(_best_path, items[: 2 * cpus])  # warm the workers' imports
        _ours_run(index, config, plans_per_block)  # warm: Ray workers, imports
        # The single process runs in every round too: this machine's speed drifts by
        # ±10% over minutes, so a single figure taken once would skew every ratio.
        for _ in range(rounds):
            singles.append(_single(_best_path, items[: max(len(items) // 2, 1)]))
            if naive:
                naives.append(_single(_naive_path, items[: max(len(items) // 8, 1)]).rate)
            pools.append(_pool_run(pool, items))
            ours_runs.append(_ours_run(index, config, plans_per_block))
    single = statistics.median(r.rate for r in singles)
    pool_rate = statistics.median(r.rate for r in pools)
    ours = statistics.median(r.rate for r in ours_runs)
    result["single_rounds"] = [round(r.rate, 1) for r in singles]
    result["pool_rounds"] = [round(r.rate, 1) for r in pools]
    result["ours_rounds"] = [round(r.rate, 1) for r in ours_runs]
    # Ratios are taken within each round (the three ran back to back) and then the
    # median over rounds, so a slow or fast spell of the machine cancels out.
    rounds_ = list(zip(singles, pools, ours_runs, strict=True))
    result.update(
        {
            "single_images_per_s": round(single, 1),
            "pool_images_per_s": round(pool_rate, 1),
            "ours_images_per_s": round(ours, 1),
            "pool_per_core_vs_single": _median_ratio(p.rate / cpus / s.rate for s, p, _ in rounds_),
            "ours_per_core_vs_single": _median_ratio(o.rate / cpus / s.rate for s, _, o in rounds_),
            "ours_vs_pool": _median_ratio(o.rate / p.rate for _, p, o in rounds_),
            # Where the time goes: CPU ms per image of the single process, of the whole
            # machine during Pool(2) and during ours, and of Ray's driver during ours.
            "cpu_ms_per_image": {
                "single": _median_ms(r.own_cpu_ms for r in singles),
                "pool_machine": _median_ms(r.machine_cpu_ms for r in pools),
                "ours_machine": _median_ms(r.machine_cpu_ms for r in ours_runs),
                "ours_driver": _median_ms(r.own_cpu_ms for r in ours_runs),
            },
        }
    )
    if naive:
        result["naive_images_per_s"] = round(statistics.median(naives), 1)
        result["ours_vs_naive_single_core"] = round(
            statistics.median(o.rate / cpus / n for o, n in zip(ours_runs, naives, strict=True)), 2
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--camera", type=int, default=600)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--plans-per-block",
        type=int,
        default=None,
        help="pack_to_dir's plans per Ray Data block (default: its own choice, up to 4)",
    )
    args = parser.parse_args()
    from packer.pipeline import init_ray

    init_ray(num_cpus=args.cpus)
    config = PackingConfig(batch_size=8)
    photos = _write_jpegs(OUT / f"photos-{args.photos}", args.photos, (500, 375), seed=1)
    camera = _write_jpegs(OUT / f"camera-{args.camera}", args.camera, (3000, 2000), seed=2)
    report = {
        "cpus": args.cpus,
        "photo_jpegs_500x375": measure(
            photos, config, args.cpus, False, args.rounds, args.plans_per_block
        ),
        "camera_jpegs_3000x2000": measure(
            camera, config, args.cpus, True, args.rounds, args.plans_per_block
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
