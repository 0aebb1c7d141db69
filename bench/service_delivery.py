"""`navit serve` against `navit pack` on the same images: what the service delivers to
two Flight ranks, and where its CPU goes (bench/bench_pipeline.py's service part).

A round packs the epoch with `pack_to_dir`, then starts the service in this process
(`service.serve.start_service`, on the same local Ray) and has two reader processes,
ranks 0 and 1 of world size 2, read epoch 0 to its end; the rate is the images both
received over the time from the go signal to the last batch. Readers count the images
of every batch (its image_ids), so a rate is what a trainer got, not what was planned.
The readers run on the same CPUs as the fill, as trainers on one machine would: their
CPU per image is reported apart. With `perf` present, a last round samples this
process (the service: Flight's send, the fill's results, the accounting) by shared
object, so the driver's CPU is split between Python, Arrow/Flight/gRPC, libc copies and
the kernel.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from cpu_use import CpuUse

from packer.config import PackingConfig
from packer.index.cache import load_index
from packer.plan.history import ConfigHistory

WORLD_SIZE = 2


def _read_rank(location: str, rank: int, ready, go, results) -> None:
    """Read rank `rank`'s epoch 0 to its end once `go` is set: (rank, images, bytes)."""
    import pyarrow.flight as flight

    from packer.contract.cursor import Cursor

    client = flight.connect(location)
    ready.put(rank)
    go.wait()
    ticket = Cursor(rank, WORLD_SIZE, epoch=0).to_ticket()
    reader = client.do_get(flight.Ticket(ticket))
    images = nbytes = 0
    for chunk in reader:  # a FlightStreamChunk: data and app_metadata
        images += len(chunk.data.column("image_ids").flatten())
        nbytes += chunk.data.nbytes
    client.close()
    results.put((rank, images, nbytes))


def serve_once(folder: Path, index, config: PackingConfig, cpus: int, perf: bool = False) -> dict:
    """One service run: images/s both ranks received, CPU ms per image by role, and
    (with `perf`) this process's CPU by shared object."""
    from service.serve import start_service

    state = Path(tempfile.mkdtemp(prefix="bench-service-"))
    context = mp.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    handle = start_service(
        dataset=str(folder),
        index=index,
        config=config,
        api_port=0,
        flight_port=0,
        state_dir=state,
        ray_num_cpus=cpus,
        log_level="warning",
    )
    readers = [
        context.Process(target=_read_rank, args=(handle.flight_location, r, ready, go, results))
        for r in range(WORLD_SIZE)
    ]
    try:
        for reader in readers:
            reader.start()
        for _ in readers:
            ready.get(timeout=120)
        named = {reader.pid: "readers" for reader in readers}
        before = CpuUse.now()
        profiler = _perf_record() if perf else None
        start = time.perf_counter()
        go.set()
        received = [results.get(timeout=600) for _ in readers]
        wall = time.perf_counter() - start
        spent = CpuUse.now().spent_since(before, named=named)
        by_object = _perf_report(profiler) if profiler else None
        for reader in readers:
            reader.join(timeout=60)
    finally:
        handle.stop()
        shutil.rmtree(state, ignore_errors=True)
    images = sum(r[1] for r in received)
    run = {
        "images": images,
        "rate": images / wall,
        "mb_per_s": sum(r[2] for r in received) / wall / 1e6,
        "cpu_ms": {role: 1e3 * s / images for role, s in spent.items()},
    }
    if by_object is not None:
        driver_ms = run["cpu_ms"]["driver"]
        run["driver_by_object_ms"] = {k: round(v * driver_ms, 3) for k, v in by_object.items()}
    return run


def pack_once(folder: Path, index, config: PackingConfig) -> dict:
    from packer.pipeline import pack_to_dir

    out = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    try:
        before = CpuUse.now()
        start = time.perf_counter()
        images = pack_to_dir(index, ConfigHistory.start(config), out).images_packed
        wall = time.perf_counter() - start
        spent = CpuUse.now().spent_since(before)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "images": images,
        "rate": images / wall,
        "cpu_ms": {role: 1e3 * s / images for role, s in spent.items()},
    }


def measure_service(folder: Path, config: PackingConfig, cpus: int, rounds: int) -> dict:
    """Interleaved rounds of pack and serve on `folder`; medians, and the ratio."""
    index = load_index(str(folder))
    pack_once(folder, index, config)  # warm Ray's workers for both
    packs, serves = [], []
    for _ in range(rounds):
        packs.append(pack_once(folder, index, config))
        serves.append(serve_once(folder, index, config, cpus))
    result = {
        "images": serves[0]["images"],
        "pack_rounds": [round(r["rate"], 1) for r in packs],
        "serve_rounds": [round(r["rate"], 1) for r in serves],
        "pack_images_per_s": round(statistics.median(r["rate"] for r in packs), 1),
        "serve_images_per_s": round(statistics.median(r["rate"] for r in serves), 1),
        "serve_mb_per_s": round(statistics.median(r["mb_per_s"] for r in serves), 1),
        "serve_vs_pack": round(
            statistics.median(s["rate"] / p["rate"] for s, p in zip(serves, packs, strict=True)),
            3,
        ),
        "cpu_ms_per_image": {
            "pack": _median_roles([r["cpu_ms"] for r in packs]),
            "serve": _median_roles([r["cpu_ms"] for r in serves]),
        },
    }
    if shutil.which("perf"):
        profiled = serve_once(folder, index, config, cpus, perf=True)
        result["serve_driver_by_object_ms"] = profiled.get("driver_by_object_ms")
    return result


def _median_roles(runs: list[dict[str, float]]) -> dict[str, float]:
    return {role: round(statistics.median(r[role] for r in runs), 3) for role in runs[0]}


def _perf_record() -> tuple[subprocess.Popen, Path] | None:
    """perf sampling this process (software clock, every thread) until _perf_report."""
    import os

    output = Path(tempfile.mkdtemp(prefix="bench-perf-")) / "perf.data"
    command = ["perf", "record", "-e", "cpu-clock", "-F", "499", "-p", str(os.getpid())]
    process = subprocess.Popen(
        [*command, "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)  # perf attaches
    return process, output


def _perf_report(profiler: tuple[subprocess.Popen, Path]) -> dict[str, float] | None:
    """Shares of the samples by shared object, grouped (python, arrow, flight+grpc,
    libc, kernel, ray, other); None if perf could not sample."""
    process, output = profiler
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    try:
        report = subprocess.run(
            ["perf", "report", "-i", str(output), "--stdio", "--sort", "dso", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    finally:
        shutil.rmtree(output.parent, ignore_errors=True)
    shares: dict[str, float] = {}
    for line in report.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].endswith("%"):
            continue
        group = _object_group(parts[-1])
        shares[group] = shares.get(group, 0.0) + float(parts[0].rstrip("%")) / 100
    return shares or None


def _object_group(name: str) -> str:
    lowered = name.lower()
    for group, needles in (
        ("kernel", ("[kernel",)),
        ("flight_grpc", ("flight", "grpc")),
        ("arrow", ("arrow", "parquet")),
        ("ray", ("_raylet", "ray")),
        ("python", ("python", ".cpython-")),
        ("libc", ("libc", "libm", "libstdc", "ld-linux")),
    ):
        if any(needle in lowered for needle in needles):
            return group
    return "other"
