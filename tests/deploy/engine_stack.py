"""docker-compose.yml on a real Docker engine, with deploy/compose.host.yml (host network).

Run by `make compose-test` (tests/deploy/compose_engine.sh builds the images and starts
the engine first), never by `make test`: the file name is outside pytest's `test_*.py`
pattern, and it needs root, an engine and minutes. The tests share one stack and run in
file order: ray-head, two 1-CPU ray-worker containers, data-init, the packer with two
streamers (one on each ray-worker) and one CPU trainer; then 4 ranks read an epoch from
the streamers (the trainer's Flight client, in threads of this test) while one
streamer is killed. Figures (time to the first trained step, images/s with one and two
workers, the coordinator's share of the bytes, packing efficiency) go to
$NAVIT_COMPOSE_OUT/figures.json for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from packer.contract.cursor import Cursor
from tests.deploy.compose_local import REPO
from tests.processes import assert_cursor_continues

if "NAVIT_COMPOSE_OUT" not in os.environ:
    pytest.skip("run by `make compose-test`", allow_module_level=True)

OUT = Path(os.environ["NAVIT_COMPOSE_OUT"])
PROJECT = os.environ["NAVIT_COMPOSE_PROJECT"]
API = "http://127.0.0.1:28000"  # deploy/compose.host.yml
FLIGHT = "grpc://127.0.0.1:28815"
IMAGES = 400
STEPS = 600
CKPT_EVERY = 50
KNOBS = {
    "NAVIT_CPU_IMAGE": os.environ["NAVIT_CPU_IMAGE"],
    "NAVIT_TRAINER_IMAGE": os.environ["NAVIT_TRAINER_IMAGE"],
    "NAVIT_SAMPLE_IMAGES": str(IMAGES),
    "NAVIT_SEQ_LEN": "256",
    "NAVIT_MAX_RES": "128",
    "NAVIT_BATCH_SIZE": "2",
    "NAVIT_MODEL": "tiny",
    "NAVIT_STEPS": str(STEPS),
    "NAVIT_CKPT_EVERY": str(CKPT_EVERY),
    "NAVIT_TRAINER_GPUS": "1",
    "NAVIT_STREAMERS": "2",
    "RAY_WORKER_NUM_CPUS": "1",
    "RAY_SHM_SIZE": "1gb",
    "TRAINER_SHM_SIZE": "1gb",
}
FIGURES: dict[str, object] = {}
STREAMED_EPOCHS: list[int] = []  # epochs this test read from the packer itself


class Stack:
    """`docker-compose -p PROJECT -f docker-compose.yml -f deploy/compose.host.yml`."""

    def __init__(self) -> None:
        self.env_file = OUT / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in KNOBS.items()))
        # Only the env file speaks: no NAVIT_*/RAY_* of the caller's shell.
        self.env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}

    def compose(self, *args: str, timeout: float = 300) -> str:
        command = [
            "docker-compose",
            "-p",
            PROJECT,
            "-f",
            str(REPO / "docker-compose.yml"),
            "-f",
            str(REPO / "deploy/compose.host.yml"),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=REPO, timeout=timeout
        )
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def logs(self, service: str, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", service)

    def volume(self, name: str) -> Path:
        return Path(docker("volume", "inspect", "-f", "{{.Mountpoint}}", f"{PROJECT}_{name}"))

    def metrics(self) -> list[dict]:
        path = self.volume("navit-ckpt") / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip().endswith("}")]

    def stats(self) -> dict:
        return httpx.get(f"{API}/stats", timeout=10).json()


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stderr}"
    return done.stdout.strip()


def state(container: str) -> dict:
    return json.loads(docker("inspect", "-f", "{{json .State}}", container))


def wait(condition: Callable[[], object], what: str, stack: Stack, service: str, timeout=300):
    # The deadline only guards against a hang; its failure shows the service's log.
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout} s; {service}:\n{stack.logs(service)}")
        time.sleep(0.5)
    return value


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack()
    stack.compose("down", "-v", "--remove-orphans")  # a stack a killed run left behind
    try:
        stack.up_at = time.monotonic()
        stack.compose("up", "-d", "--no-build", "--scale", "ray-worker=2", timeout=600)
        yield stack
    finally:
        (OUT / "figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
        stack.compose("down", "-v", "--remove-orphans")


def stream_epoch(stack: Stack, on_batch: Callable[[int], None] = lambda n: None) -> list[str]:
    """Every image id of the next epoch no rank has read yet (the packer plans epochs in
    order), for rank 0 of 1, as a trainer reads them: the trainer's Flight client asks
    the packer where the stream is (a streamer) and asks again if it breaks."""
    from trainer.data import iter_batches

    planned = [stack.metrics()[-1]["epoch"], *STREAMED_EPOCHS]  # the trainer's, then ours
    epoch = max(planned) + 1
    STREAMED_EPOCHS.append(epoch)
    received: list[str] = []
    stream = iter_batches(FLIGHT, Cursor(0, 1, epoch), end_epoch=epoch + 1, prefetch=0)
    for batches, (_, batch) in enumerate(stream, start=1):
        received += batch.image_ids
        on_batch(batches)
    return received


def images_per_s(stack: Stack, epochs: int = 8) -> float:
    started = time.monotonic()
    delivered = sum(len(stream_epoch(stack)) for _ in range(epochs))
    return delivered / (time.monotonic() - started)


def dataset_images(stack: Stack) -> list[str]:
    root = stack.volume("navit-data") / "sample"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_every_service_becomes_healthy(stack: Stack) -> None:
    for service in ("ray-head", "ray-worker", "packer"):
        for container in stack.containers(service):
            wait(
                lambda c=container: state(c).get("Health", {}).get("Status") == "healthy",
                "healthy",
                stack,
                service,
            )
    assert len(stack.containers("ray-worker")) == 2
    (data_init,) = stack.containers("data-init")
    assert state(data_init)["ExitCode"] == 0


def test_nothing_the_stack_runs_listens_beyond_loopback(stack: Stack) -> None:
    wait(stack.metrics, "training", stack, "trainer", timeout=600)  # every service is up
    pids = set()
    for container in docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"
    ).split():
        pids |= set(docker("top", container, "-eo", "pid").split()[1:])
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [
        line.split()
        for line in listening.splitlines()
        if set(re.findall(r"pid=(\d+)", line)) & pids
    ]
    assert ours, "the stack's servers should show in ss"
    beyond = [
        words[3]
        for words in ours
        if not re.match(r"(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]|\[::1\]):", words[3])
    ]
    assert not beyond, beyond


def test_trainer_resumes_at_its_checkpoint_cursor_after_compose_restart(stack: Stack) -> None:
    first = wait(stack.metrics, "training", stack, "trainer", timeout=600)[0]
    FIGURES["up_to_first_step_s"] = round(time.monotonic() - stack.up_at, 1)
    assert first["step"] == 1
    wait(lambda: len(stack.metrics()) >= 2 * CKPT_EVERY, "past 2 checkpoints", stack, "trainer")
    before = stack.metrics()
    restart_started = time.monotonic()
    stack.compose("restart", "trainer")
    # SIGTERM ends it, no 10 s wait for SIGKILL (`init: true` in docker-compose.yml).
    FIGURES["trainer_restart_s"] = round(time.monotonic() - restart_started, 1)
    (trainer,) = stack.containers("trainer")
    resumed_args = []
    while state(trainer)["Running"]:
        top = subprocess.run(["docker", "top", trainer, "-eo", "pid,args"], capture_output=True)
        resumed_args += [line for line in top.stdout.decode().splitlines() if "--resume" in line]
        time.sleep(0.2)
    assert state(trainer)["ExitCode"] == 0, stack.logs("trainer")
    # deploy/train.sh found the checkpoint and gave the trainer --resume.
    assert any("deploy.cli.train" in a for a in resumed_args), resumed_args
    after = stack.metrics()
    # A resumed run keeps the lines up to its checkpoint as they were, timings included
    # (a fresh run would have computed them again), and continues from its cursor.
    same = next(
        (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before)
    )
    assert same >= CKPT_EVERY and same % CKPT_EVERY == 0, same
    metrics = [r for r in after if "loss" in r]
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    assert_cursor_continues(metrics)
    FIGURES["resumed_from_step"] = same


def test_trainer_trains_from_the_stream_and_its_loss_falls(stack: Stack) -> None:
    losses = [r["loss"] for r in stack.metrics() if "loss" in r]
    assert len(losses) >= 50
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    FIGURES["loss_first_50_steps"], FIGURES["loss_last_50_steps"] = round(first, 3), round(last, 3)
    assert last < first, (first, last)


def test_every_valid_image_of_an_epoch_reaches_the_trainer_once(stack: Stack) -> None:
    stats = stack.stats()
    assert stats["images"] == IMAGES and stats["valid_images"] == IMAGES
    assert stats["rejected_by_reason"] == {}
    metrics = [r for r in stack.metrics() if "loss" in r]
    per_epoch: dict[int, list[dict]] = {}
    for record in metrics:  # a step's cursor is the batch after it: next_batch 1 = batch 0
        per_epoch.setdefault(record["epoch"], []).append(record)
    complete = [e for e in per_epoch if e + 1 in per_epoch]  # the trainer went past them
    assert complete, sorted(per_epoch)
    for epoch in complete:
        records = per_epoch[epoch]
        assert [r["next_batch"] for r in records] == list(range(1, len(records) + 1))
        assert sum(r["images"] for r in records) == stats["valid_images"], epoch
    FIGURES["packing_efficiency"] = stats["packing_efficiency"]
    FIGURES["delivered_efficiency"] = stats["delivered_efficiency"]


def streamer_processes(stack: Stack) -> dict[int, tuple[str, int]]:
    """Each streamer's (ray-worker container, host pid): the process that listens on
    its Flight port (its location on /stats), and the container that runs it."""
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    members = {
        container: set(map(int, docker("top", container, "-eo", "pid").split()[1:]))
        for container in stack.containers("ray-worker")
    }
    found = {}
    for row in stack.stats()["streamers"]:
        port = urlsplit(row["location"]).port
        (line,) = [w for w in listening.splitlines() if w.split()[3].endswith(f":{port}")]
        pid = int(re.search(r"pid=(\d+)", line).group(1))
        (container,) = [c for c, pids in members.items() if pid in pids]
        found[row["streamer"]] = (container, pid)
    return found


RANKS = 4
STEP_S = 0.1  # each reader rank "trains" this long per batch, so its epochs last


def test_four_ranks_read_from_a_streamer_on_each_worker_once_through_a_streamer_kill(
    stack: Stack,
) -> None:
    from trainer.data import FlightRoute, iter_batches

    stats = wait(
        lambda: (
            (s := stack.stats())["streamers"]
            and all(r["state"] == "up" for r in s["streamers"])
            and s
        ),
        "streamers up",
        stack,
        "packer",
    )
    assert len(stats["streamers"]) == 2
    first_location = stats["streamers"][0]["location"]
    where = streamer_processes(stack)
    # One streamer on each ray-worker container.
    assert sorted(c for c, _ in where.values()) == sorted(stack.containers("ray-worker"))

    # Two epochs: the kill falls in the first (while rank 0 reads it), and the second
    # can only come from the restarted streamer for ranks 0 and 2.
    first = max([stack.metrics()[-1]["epoch"], *STREAMED_EPOCHS]) + 1
    STREAMED_EPOCHS.extend([first, first + 1])
    located: list[tuple[int, int, str]] = []  # (rank, epoch, location) of every ask
    route_locate = FlightRoute.locate

    def recording_locate(route: FlightRoute, cursor: Cursor) -> tuple[str, bytes]:
        location, ticket = route_locate(route, cursor)
        located.append((cursor.rank, cursor.epoch, location))
        return location, ticket

    FlightRoute.locate = recording_locate  # type: ignore[method-assign]
    received: dict[tuple[int, int], list[str]] = {}
    failures: list[BaseException] = []
    rank0_started = threading.Event()

    def read(rank: int) -> None:
        try:
            start = Cursor(rank, RANKS, first)
            for cursor, batch in iter_batches(FLIGHT, start, end_epoch=first + 2, prefetch=0):
                received.setdefault((rank, cursor.epoch), []).extend(batch.image_ids)
                if rank == 0:
                    rank0_started.set()
                time.sleep(STEP_S)
        except BaseException as error:  # noqa: BLE001 - the test fails with it below
            failures.append(error)
            rank0_started.set()

    before = stack.stats()
    started = time.monotonic()
    readers = [threading.Thread(target=read, args=(r,)) for r in range(RANKS)]
    try:
        for reader in readers:
            reader.start()
        assert rank0_started.wait(300), "rank 0 got no batch"
        killed_at = time.monotonic()
        os.kill(where[0][1], signal.SIGKILL)  # the process of the streamer of ranks 0, 2
        for reader in readers:
            reader.join(600)
    finally:
        FlightRoute.locate = route_locate  # type: ignore[method-assign]
    seconds = time.monotonic() - started
    assert not failures, failures
    images = dataset_images(stack)
    for epoch in (first, first + 1):  # every image of each epoch, exactly once
        assert sorted(i for r in range(RANKS) for i in received[(r, epoch)]) == images, epoch
    after = wait(
        lambda: (
            (s := stack.stats())["streamers"][0]["restarts"] == 1
            and s["streamers"][0]["state"] == "up"
            and s
        ),
        "streamer 0 restarted",
        stack,
        "packer",
    )
    FIGURES["streamer_back_after_kill_s"] = round(time.monotonic() - killed_at, 1)
    new_location = after["streamers"][0]["location"]
    assert new_location != first_location  # a new process, a new Flight server
    # Ranks 0 and 2 read the second epoch from the restarted streamer.
    for rank in (0, 2):
        assert [loc for r, e, loc in located if (r, e) == (rank, first + 1)][-1] == new_location
    # How often a rank had to ask again (a stream the kill broke, or a stale location).
    FIGURES["four_ranks_asked_again"] = {
        rank: sum(r == rank for r, _, _ in located) - 2 for rank in range(RANKS)
    }
    delivered = after["throughput"]["run"]["bytes"] - before["throughput"]["run"]["bytes"]
    coordinator = after["coordinator_bytes_sent"] - before["coordinator_bytes_sent"]
    run_share = after["coordinator_bytes_sent"] / after["throughput"]["run"]["bytes"]
    FIGURES["four_ranks_images_per_s_with_a_kill"] = round(2 * len(images) / seconds, 1)
    # Over these two small epochs the share includes the index sent to the restarted
    # streamer; over the stack's whole run (the trainer's 600 steps and every epoch read
    # here so far) it is what the coordinator container costs the data path.
    FIGURES["coordinator_bytes_share_four_ranks_with_a_restart"] = round(coordinator / delivered, 5)
    FIGURES["coordinator_bytes_share_run"] = round(run_share, 5)
    assert run_share < 0.01
    # The restarted streamer serves from a ray-worker again.
    assert streamer_processes(stack)[0][1] != where[0][1]


def test_two_workers_deliver_an_epoch_with_every_image_once(stack: Stack) -> None:
    images = dataset_images(stack)
    assert len(images) == IMAGES
    assert sorted(stream_epoch(stack)) == images
    FIGURES["images_per_s_two_workers"] = images_per_s(stack)


def test_killing_a_ray_worker_mid_stream_loses_and_repeats_nothing(stack: Stack) -> None:
    victim = stack.containers("ray-worker")[-1]
    batches_seen = []

    def kill_after_two(batches: int) -> None:
        batches_seen.append(batches)
        if batches == 2:
            docker("kill", victim)

    received = stream_epoch(stack, kill_after_two)
    assert max(batches_seen) > 4, "the epoch should outlast the kill"
    assert sorted(received) == dataset_images(stack)
    assert not state(victim)["Running"] or state(victim)["RestartCount"] > 0


def test_one_worker_delivers_every_image_once(stack: Stack) -> None:
    workers = stack.containers("ray-worker")
    for container in workers[1:]:  # the killed one, if its restart policy brought it back
        docker("stop", container)
    assert sum(state(c)["Running"] for c in workers) == 1
    assert sorted(stream_epoch(stack)) == dataset_images(stack)
    one = images_per_s(stack)
    # Two workers again, so that a drift of the machine's speed shows (it is shared).
    docker("start", workers[1])
    wait(
        lambda: state(workers[1]).get("Health", {}).get("Status") == "healthy",
        "healthy",
        stack,
        "ray-worker",
    )
    two = [FIGURES["images_per_s_two_workers"], images_per_s(stack)]
    FIGURES["images_per_s_two_workers"] = [round(x, 1) for x in two]
    FIGURES["images_per_s_one_worker"] = round(one, 1)
    FIGURES["two_over_one_workers"] = round(sum(two) / len(two) / one, 2)
    FIGURES["packing_efficiency"] = stack.stats()["packing_efficiency"]


def test_compose_down_leaves_no_container_volume_or_network(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert docker("ps", "-a", "-q", "--filter", label) == ""
    assert docker("volume", "ls", "-q", "--filter", label) == ""
    assert docker("network", "ls", "-q", "--filter", label) == ""
    assert not [v for v in docker("volume", "ls", "-q").split() if v.startswith(PROJECT)]
