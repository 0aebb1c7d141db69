"""Streamers benchmark: 4 ranks read packed batches from the service with 0, 1 and 2
streamers; aggregate GB/s and images/s, CPU seconds per GB by process, and the share of
the bytes the coordinator process sent.

    .venv/bin/python bench/bench_streamers.py --json [--images 600] [--epochs 6]
        [--streamers 0,1,2] [--repeats 2] [--cpus 2] [--batch-size 8]

Each run starts the service (`start_service`, embedded local Ray with `--cpus` CPUs,
seq_len 1024, max_res 384, batch_size 8 by default: the compose defaults, 6.3 MB
batches; 64 gives 50 MB batches, fewer per GB) with N streamers, then 4 rank processes read like a trainer without a GPU: plain pyarrow
Flight clients that ask the coordinator `get_flight_info` with their ticket and `do_get`
at the endpoint's location (none with 0 streamers: the coordinator itself). Each reads
epoch 0 to warm up (Ray workers start, the first plans), waits for the others, then
reads `--epochs` more epochs; the clock and the CPU counters run over those only.

Real fill: the batches are decoded from the sample data set's JPEGs on Ray, as in
production, so on a small machine the fill bounds GB/s, whatever the transport does.
Hence CPU seconds per GB by process, from /proc (utime + stime of every process of the
run: this process, its children, Ray's):
- `coordinator`: this process (the service: Ray driver, control plane, Flight server);
- `streamers`: the streamer actors' processes (planning, Flight send, driving the fill);
- `fill_and_ray`: every other process of the run (Ray workers decoding, raylet, GCS);
- `clients`: the 4 rank processes (what a trainer spends receiving).
GB counts the Arrow bytes of the record batches the ranks received (their app_metadata
too). `coordinator_bytes_share` = bytes the coordinator's Flight server sent (its own
count: batches, FlightInfo, schemas, action results; service.live_stats.SentBytes) /
bytes the ranks received. Runs alternate over N, the median of `--repeats` is kept.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

OUT = Path(__file__).parent / "out"
RANKS = 4


def sample_dataset(images: int) -> Path:
    from packer.sample_data import write_sample_dataset

    folder = OUT / f"service-sample-{images}"
    if not folder.exists() or sum(1 for _ in folder.rglob("*.jpg")) < images:
        write_sample_dataset(folder, images, seed=0)
    return folder


# -- CPU time from /proc -----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float | None:
    """utime + stime of a process (its reaped children's too), seconds; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / _TICK


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cpu_snapshot() -> dict[int, float]:
    """CPU seconds of this process and every process below it (Ray's included)."""
    pids = {os.getpid(), *_descendants(os.getpid())}
    return {pid: cpu for pid in pids if (cpu := _cpu_of(pid)) is not None}


# -- the ranks ---------------------------------------------------------------------------


def _rank(coordinator: str, rank: int, epochs: int, barrier, results) -> None:
    """Read epoch 0 (warm-up), meet the others, read epochs 1..epochs; report."""
    clients: dict[str, flight.FlightClient] = {}
    frames = [("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1)]  # the trainer's setting

    def client(location: str) -> flight.FlightClient:
        if location not in clients:
            clients[location] = flight.FlightClient(location, generic_options=frames)
        return clients[location]

    def read(epoch: int) -> tuple[int, int, int]:
        command = json.dumps({"rank": rank, "world_size": RANKS, "epoch": epoch}).encode()
        info = client(coordinator).get_flight_info(flight.FlightDescriptor.for_command(command))
        (endpoint,) = info.endpoints
        where = endpoint.locations[0].uri.decode() if endpoint.locations else coordinator
        nbytes = images = batches = 0
        for chunk in client(where).do_get(endpoint.ticket):
            nbytes += chunk.data.nbytes + chunk.app_metadata.size
            images += pc.sum(pc.list_value_length(chunk.data.column("image_ids"))).as_py() or 0
            batches += 1
        return nbytes, images, batches

    read(0)
    barrier.wait()
    began, cpu = time.time(), time.process_time()
    totals = [0, 0, 0]
    for epoch in range(1, epochs + 1):
        for i, value in enumerate(read(epoch)):
            totals[i] += value
    results.put((rank, os.getpid(), began, time.time(), *totals, time.process_time() - cpu))
    for c in clients.values():
        c.close()


def run_once(dataset: Path, streamers: int, epochs: int, cpus: int, batch_size: int) -> dict:
    from packer.config import PackingConfig
    from service.serve import start_service

    config = PackingConfig(seq_len=1024, batch_size=batch_size, max_res=384, pack_window=256)
    with tempfile.TemporaryDirectory() as state_dir:
        handle = start_service(
            dataset=str(dataset),
            config=config,
            api_port=0,
            flight_port=0,
            state_dir=state_dir,
            index_cache_dir=OUT / "index-cache",
            ray_num_cpus=cpus,
            streamers=streamers,
            log_level="warning",
        )
        try:
            context = mp.get_context("spawn")
            barrier = context.Barrier(RANKS + 1)
            results = context.Queue()
            ranks = [
                context.Process(
                    target=_rank, args=(handle.flight_location, r, epochs, barrier, results)
                )
                for r in range(RANKS)
            ]
            for p in ranks:
                p.start()
            barrier.wait(timeout=600)  # every rank read its warm-up epoch
            cpu_before = cpu_snapshot()
            sent_before = handle.job.flight_sent.total
            outcomes = [results.get(timeout=1200) for _ in ranks]
            cpu_after = cpu_snapshot()
            sent = handle.job.flight_sent.total - sent_before
            streamer_pids = set(handle.streamers.pids()) if handle.streamers else set()
            for p in ranks:
                p.join(timeout=60)
        finally:
            handle.stop()
    began = min(o[2] for o in outcomes)
    ended = max(o[3] for o in outcomes)
    nbytes = sum(o[4] for o in outcomes)
    images = sum(o[5] for o in outcomes)
    seconds = ended - began
    gb = nbytes / 1e9
    client_pids = {o[1] for o in outcomes}
    by_role = {"coordinator": 0.0, "streamers": 0.0, "fill_and_ray": 0.0, "clients": 0.0}
    for pid, cpu in cpu_after.items():
        used = cpu - cpu_before.get(pid, 0.0)
        role = (
            "coordinator"
            if pid == os.getpid()
            else "streamers"
            if pid in streamer_pids
            else "clients"
            if pid in client_pids
            else "fill_and_ray"
        )
        by_role[role] += used
    # The rank processes' own count (their CPU in the timed part only).
    by_role["clients"] = sum(o[7] for o in outcomes)
    return {
        "streamers": streamers,
        "seconds": round(seconds, 2),
        "gb": round(gb, 3),
        "batches": sum(o[6] for o in outcomes),
        "images": images,
        "gb_per_s": round(gb / seconds, 4),
        "images_per_s": round(images / seconds, 1),
        "cpu_s_per_gb": {k: round(v / gb, 2) for k, v in by_role.items()},
        "cpu_s_per_gb_total": round(sum(by_role.values()) / gb, 2),
        "coordinator_bytes_sent": sent,
        "coordinator_bytes_share": round(sent / nbytes, 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument("--images", type=int, default=600, help="sample dataset size")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per run")
    parser.add_argument("--streamers", default="0,1,2", help="streamer counts to run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    dataset = sample_dataset(args.images)
    counts = [int(n) for n in args.streamers.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:  # alternating, so a burst of load elsewhere hits every count alike
            runs[n].append(run_once(dataset, n, args.epochs, args.cpus, args.batch_size))
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "ray_cpus": args.cpus,
        },
        "ranks": RANKS,
        "batch_size": args.batch_size,
        "images": args.images,
        "timed_epochs": args.epochs,
        "runs": {},
    }
    for n, results in runs.items():
        median = sorted(results, key=lambda r: r["gb_per_s"])[len(results) // 2]
        report["runs"][f"{n}_streamers"] = {
            **median,
            "all_gb_per_s": [r["gb_per_s"] for r in results],
            "all_coordinator_bytes_share": [r["coordinator_bytes_share"] for r in results],
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'streamers':>9} {'GB/s':>7} {'images/s':>9} {'CPU-s/GB':>9} {'coord share':>11}")
    for run in report["runs"].values():
        print(
            f"{run['streamers']:>9} {run['gb_per_s']:>7.3f} {run['images_per_s']:>9.1f} "
            f"{run['cpu_s_per_gb_total']:>9.2f} {run['coordinator_bytes_share']:>11.5f}"
        )
    print(json.dumps({k: v["cpu_s_per_gb"] for k, v in report["runs"].items()}))


if __name__ == "__main__":
    main()
