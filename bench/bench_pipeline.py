"""Pipeline throughput: `navit pack`'s pipeline against the peers a user would pick
instead, every one making the same packed folder from the same plans, in one run.

    .venv/bin/python bench/bench_pipeline.py [--photos 3000] [--camera 600] [--cpus 2]
        [--rounds 5] [--no-profile] [--no-service] [--sets photos,camera]

- ours: `pack_to_dir` on a local Ray with `cpus` CPUs (plain Ray tasks of a few plans
  each, workers write the files; the stats, rejected.jsonl and notes.jsonl too), planning
  included;
- the peers (bench/peers.py): multiprocessing Pool(cpus), torch DataLoader(num_workers=
  cpus) with a packing collate, plain Ray Data with its defaults.
All start from the same `BatchPlan`s (packer.plan.epoch.plan_epoch) and write the same
Arrow batch files: before timing, every peer's files are compared byte for byte with
ours (all names, and the bytes of `--checked` batches spread over the epoch).

Two data sets are generated once under bench/out/ (not in git): photo-sized JPEGs (500x375,
like ImageNet) and camera JPEGs (3000x2000). A round runs every contender once, in an
order that rotates from round to round; rates are medians over rounds, and each ratio is
the median over rounds of the ratio within a round (this machine is shared, and its speed
drifts by +-10% over minutes). CPU per image is split by role (bench/cpu_use.py: the
driver, the workers, Ray's own processes, and what ran beside a run); a last, profiled
run of ours and the best peer splits the driver's and the workers' CPU by stage with
py-spy (bench/stage_profile.py). With the service part (bench/service_delivery.py),
`navit serve`'s delivery to two Flight ranks is timed against `pack_to_dir` on the photos.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cpu_use import CpuUse
from peers import DataLoaderPeer, PoolPeer, RayDataPeer, RayDataTunedPeer
from PIL import Image
from stage_profile import StageProfile

from packer.config import PackingConfig
from packer.contract.packed_folder import batch_files, epoch_folder
from packer.index.cache import load_index
from packer.index.image_index import ImageIndex
from packer.plan.batch_plan import BatchPlan
from packer.plan.epoch import plan_epoch
from packer.plan.history import ConfigHistory

OUT = Path(__file__).parent / "out"
PEERS = ("pool", "dataloader", "ray_data")


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """`count` JPEGs of `size` (a third portrait) under folder/images, made once."""
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
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        if i % 3 == 0:
            image = image.transpose(Image.Transpose.ROTATE_90)
        image.save(target / f"{i:05d}.jpg", quality=90)
    return folder


class Ours:
    """`pack_to_dir`, as `navit pack` runs it (stats, logs and the ledger included)."""

    name = "ours"

    def __init__(self, index: ImageIndex, history: ConfigHistory) -> None:
        self.index = index
        self.history = history

    def run(self, plans: list[BatchPlan], out_dir: str | Path) -> int:
        from packer.pipeline import pack_to_dir

        return pack_to_dir(self.index, self.history, out_dir).images_packed

    def worker_pids(self) -> None:
        return None  # Ray's workers (bench.cpu_use.role_of)

    def close(self) -> None:
        pass


@dataclass
class Run:
    """One timed run: images/s, CPU ms per image by role, and how busy the workers kept
    the CPUs (their CPU time over cpus x wall time)."""

    rate: float
    cpu_ms: dict[str, float]
    utilisation: float


def timed_run(runner, plans: list[BatchPlan], cpus: int, profile: bool = False):
    """Run `runner` once into a fresh folder; (Run, its stages if `profile`)."""
    out = Path(tempfile.mkdtemp(prefix=f"bench-{runner.name}-", dir=OUT))
    try:
        before = CpuUse.now()
        workers = runner.worker_pids()
        stages = None
        if profile:
            pids = {"driver": [os.getpid()], "workers": before.pids("workers", workers)}
            with StageProfile(pids) as stages:
                wall, images = _timed(runner, plans, out)
        else:
            wall, images = _timed(runner, plans, out)
        spent = CpuUse.now().spent_since(before, workers)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    run = Run(
        rate=images / wall,
        cpu_ms={role: 1e3 * s / images for role, s in spent.items()},
        utilisation=spent["workers"] / (cpus * wall),
    )
    return run, (stages.ms_per_image(spent, images) if stages else None), stages


def _timed(runner, plans: list[BatchPlan], out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    images = runner.run(plans, out)
    return time.perf_counter() - start, images


def same_files(ours: Path, theirs: Path, checked: int) -> bool:
    """The same batch file names, and the same bytes in `checked` of them spread over
    the epoch (its first and last included)."""
    mine, other = batch_files(epoch_folder(ours, 0)), batch_files(epoch_folder(theirs, 0))
    if [p.name for p in mine] != [p.name for p in other] or not mine:
        return False
    picks = sorted({round(k) for k in np.linspace(0, len(mine) - 1, max(checked, 2))})
    return all(mine[k].read_bytes() == other[k].read_bytes() for k in picks)


def _median(values) -> float:
    return statistics.median(values)


def make_runner(name: str, cpus: int, plans: list[BatchPlan], index, history):
    """A contender by name: pool, dataloader, ray_data, ray_data_tuned_N, ours."""
    if name == "pool":
        return PoolPeer(cpus)
    if name == "dataloader":
        return DataLoaderPeer(cpus, plans)
    if name == "ray_data":
        return RayDataPeer()
    if name.startswith("ray_data_tuned_"):
        return RayDataTunedPeer(int(name.rsplit("_", 1)[1]))
    if name == "ours":
        return Ours(index, history)
    raise SystemExit(f"unknown contender {name!r}")


def measure_set(
    dataset: Path,
    config: PackingConfig,
    contenders: list[str],
    cpus: int,
    rounds: int,
    checked: int,
    profile: bool,
) -> dict:
    index = load_index(str(dataset))
    history = ConfigHistory.start(config)
    plans = list(plan_epoch(index, history, 0).planner.iter_plans())
    runners = [make_runner(name, cpus, plans, index, history) for name in contenders]
    try:
        return _measure(runners, plans, cpus, rounds, checked, profile)
    finally:
        for runner in runners:
            runner.close()


def _measure(runners, plans, cpus: int, rounds: int, checked: int, profile: bool) -> dict:
    names = [r.name for r in runners]
    # ray_data_tuned_N is ours as it was, not a peer: reported beside, never "best".
    peers = [name for name in names if name in PEERS]
    result: dict = {"images": sum(p.num_images for p in plans), "batches": len(plans)}
    # Warm every contender (imports, workers) and check its files against ours.
    reference = Path(tempfile.mkdtemp(prefix="bench-reference-", dir=OUT))
    try:
        by_name = {r.name: r for r in runners}
        by_name["ours"].run(plans, reference)
        equal = {}
        for name in [n for n in names if n != "ours"]:
            theirs = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=OUT))
            by_name[name].run(plans, theirs)
            equal[name] = same_files(reference, theirs, checked)
            shutil.rmtree(theirs)
    finally:
        shutil.rmtree(reference, ignore_errors=True)
    result["same_files_as_ours"] = equal
    if not all(equal.values()):
        raise SystemExit(f"a peer's batch files differ from ours: {equal}")

    runs: dict[str, list[Run]] = {name: [] for name in names}
    for k in range(rounds):
        order = runners[k % len(runners) :] + runners[: k % len(runners)]
        for runner in order:
            runs[runner.name].append(timed_run(runner, plans, cpus)[0])
    rates = {name: _median(r.rate for r in runs[name]) for name in names}
    best = max(peers, key=lambda name: rates[name])
    result["rounds"] = {name: [round(r.rate, 1) for r in runs[name]] for name in names}
    result["peers"] = {name: round(rates[name], 1) for name in peers}
    result["ours"] = round(rates["ours"], 1)
    result["others"] = {n: round(rates[n], 1) for n in names if n not in peers and n != "ours"}
    result["best_peer"] = best
    result["ours_vs_peer"] = {
        name: round(
            _median(o.rate / p.rate for o, p in zip(runs["ours"], runs[name], strict=True)), 3
        )
        for name in names
        if name != "ours"
    }
    result["ours_vs_best_peer"] = result["ours_vs_peer"][best]
    result["cpu_ms_per_image"] = {
        name: {
            role: round(_median(r.cpu_ms[role] for r in runs[name]), 3)
            for role in runs[name][0].cpu_ms
        }
        for name in names
    }
    result["utilisation"] = {
        name: round(_median(r.utilisation for r in runs[name]), 3) for name in names
    }
    if profile:
        result["stages_ms_per_image"] = {}
        result["framework_leaves"] = {}
        for name in ("ours", best):
            run, stages, profiled = timed_run(by_name[name], plans, cpus, profile=True)
            result["stages_ms_per_image"][name] = {"rate": round(run.rate, 1), **stages}
            result["framework_leaves"][name] = {
                role: [f"{n} {leaf}" for leaf, n in leaves.most_common(6)]
                for role, leaves in profiled.framework_leaves.items()
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--camera", type=int, default=600)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checked", type=int, default=5, help="batches compared byte for byte")
    parser.add_argument("--sets", default="photos,camera")
    parser.add_argument(
        "--contenders",
        default="pool,dataloader,ray_data,ours",
        help="also ray_data_tuned_N: pack_to_dir's Ray Data path before it moved to tasks",
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-service", action="store_true")
    parser.add_argument("--service-rounds", type=int, default=3)
    args = parser.parse_args()

    from packer.pipeline import init_ray

    # Ray starts its workers at nice 15 (RAY_worker_niceness); on this shared machine
    # that hands another user's processes the CPUs during ours but not during the
    # peers', whose workers run at nice 0. Alone on a machine it changes nothing.
    os.environ.setdefault("RAY_worker_niceness", "0")
    init_ray(num_cpus=args.cpus)
    _quiet_ray_data()
    OUT.mkdir(parents=True, exist_ok=True)
    config = PackingConfig(batch_size=8)
    sets = {
        "photos": ("photo_jpegs_500x375", args.photos, (500, 375), 1),
        "camera": ("camera_jpegs_3000x2000", args.camera, (3000, 2000), 2),
    }
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "ray_cpus": args.cpus,
            "python": platform.python_version(),
        },
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    started = time.time()
    for key in args.sets.split(","):
        name, count, size, seed = sets[key]
        folder = write_jpegs(OUT / f"{key}-{count}", count, size, seed)
        report[name] = measure_set(
            folder,
            config,
            args.contenders.split(","),
            args.cpus,
            args.rounds,
            args.checked,
            not args.no_profile,
        )
    if not args.no_service:
        from service_delivery import measure_service

        folder = write_jpegs(OUT / f"photos-{args.photos}", args.photos, (500, 375), 1)
        report["service_vs_pack_photos"] = measure_service(
            folder, config, args.cpus, args.service_rounds
        )
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["minutes"] = round((time.time() - started) / 60, 1)
    print(json.dumps(report, indent=2))


def _quiet_ray_data() -> None:
    """Ray Data's INFO and WARNING lines (the plain peer's "falling back to pickled
    objects", its execution summaries) stay in Ray's log file, off the JSON."""
    import logging

    import ray.data  # noqa: F401 - sets up its handlers

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)


if __name__ == "__main__":
    main()
