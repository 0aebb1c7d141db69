"""docker-compose.yml and deploy/: the file validates, its parts fit together, and every
service's command works when run for real (as local processes, see compose_local.py),
through a Ray worker dying mid-stream and a trainer killed and restarted."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packer.contract.cursor import Cursor
from tests.deploy.compose_local import (
    COMPOSE_FILE,
    REPO,
    LocalCompose,
    LocalService,
    dockerfile_copies,
    load_compose,
    variables,
)
from tests.processes import assert_cursor_continues, cmdline, wait_for

DEPLOY = REPO / "deploy"
# What a plain `docker-compose up` reads after docker-compose.yml: published ports, GPUs.
DEFAULT_OVERRIDE = REPO / "docker-compose.override.yml"
ENV_EXAMPLE = REPO / ".env.example"
SERVICES = {"ray-head", "ray-worker", "data-init", "packer", "trainer"}


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip(
            "the docker-compose binary is absent (Debian package docker-compose; "
            "`make test-tools` installs it)"
        )
    return path


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# ---------------------------------------------------------------------------------------
# The file itself


@pytest.mark.parametrize("env_file", ["none", ".env.example"])
def test_docker_compose_config_validates(tmp_path: Path, env_file: str) -> None:
    binary = docker_compose()
    # An empty env file stands for "no .env": every variable must have a default.
    env_path = ENV_EXAMPLE if env_file == ".env.example" else tmp_path / "empty.env"
    if env_file == "none":
        env_path.write_text("")
    files = ["-f", str(COMPOSE_FILE), "-f", str(DEFAULT_OVERRIDE)]
    base = [binary, *files, "--env-file", str(env_path)]
    clean_env = {"PATH": "/usr/bin:/bin"}  # no NAVIT_*/RAY_* of the developer's shell
    done = subprocess.run(
        [*base, "config", "-q"], capture_output=True, text=True, env=clean_env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr  # e.g. a variable without default
    services = subprocess.run(
        [*base, "config", "--services"], capture_output=True, text=True, env=clean_env
    )
    assert set(services.stdout.split()) == SERVICES


def test_services_have_health_checks_restart_policies_and_volumes() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert "restart" in service, name
        if name != "data-init":  # a one-off job has no health to check
            assert service["healthcheck"]["test"][0] == "CMD", name
    # A finished run stays finished; a crash or a bad config retries a bounded number of
    # times, then the container stays down with its exit code and log.
    assert services["trainer"]["restart"] == "on-failure:5"
    for name in SERVICES - {"data-init"}:
        assert re.fullmatch(r"on-failure:\d+", services[name]["restart"]), name
    declared = set(compose["volumes"])
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used == declared == {"navit-data", "navit-state", "navit-ckpt"}
    # Every Ray node reads images from the same data set as the packer.
    for name in ("ray-head", "ray-worker", "packer"):
        assert "navit-data:/data" in services[name]["volumes"]
    # --scale ray-worker=N needs no fixed name and no host port. Published ports are the
    # default layout's (host networking cannot have them): docker-compose.override.yml.
    assert "container_name" not in services["ray-worker"]
    assert not [name for name, service in services.items() if "ports" in service]
    published = load_compose(DEFAULT_OVERRIDE)["services"]
    assert set(published) == {"ray-head", "packer", "trainer"}
    assert [p.rsplit(":", 1)[1] for p in published["ray-head"]["ports"]] == ["8265"]
    assert {p.rsplit(":", 1)[1] for p in published["packer"]["ports"]} == {"8000", "8815"}
    assert "--ray-address" not in " ".join(services["packer"]["command"])  # packer.sh adds it
    assert "ray-head:6379" in services["packer"]["command"]
    assert "--source=grpc://packer:8815" in services["trainer"]["command"]


def test_trainer_reserves_gpus_in_a_form_every_compose_accepts() -> None:
    # In the default override: compose cannot take a reservation back out of a file, and
    # without it the stack runs on a machine with no GPU (deploy/compose.host.yml).
    assert "deploy" not in load_compose()["services"]["trainer"]
    trainer = load_compose(DEFAULT_OVERRIDE)["services"]["trainer"]
    (device,) = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    # docker-compose 1.x refuses a string count at `up` (config -q does not notice).
    count = device["count"]
    assert count == "all" or isinstance(count, int), count


def test_env_example_lists_exactly_the_compose_knobs() -> None:
    text = COMPOSE_FILE.read_text() + DEFAULT_OVERRIDE.read_text()
    used = variables(text)
    listed = set(env_example())
    assert used == listed, {"not in .env.example": used - listed, "unused": listed - used}
    # Each use has a default (`${VAR:-...}`), so no .env is needed.
    for match in re.finditer(r"\$\{([^}]*)\}", text):
        assert ":-" in match.group(1), match.group(0)


def test_dockerfiles_copy_what_their_services_need() -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        # .dockerignore semantics enough for ours: later lines win, `!` re-includes.
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for dockerfile in ("cpu.Dockerfile", "trainer.Dockerfile"):
        for sources, _ in dockerfile_copies(DEPLOY / dockerfile):
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source}"
                assert included(source), f"{dockerfile}: {source} is in .dockerignore"
    cpu = (DEPLOY / "cpu.Dockerfile").read_text()
    # Ray workers import the packer's fill function: the CPU image installs the project.
    assert "pip install -e ." in cpu
    copied = {s for sources, _ in dockerfile_copies(DEPLOY / "cpu.Dockerfile") for s in sources}
    assert {"packer", "service", "trainer", "deploy"} <= copied
    trainer = (DEPLOY / "trainer.Dockerfile").read_text()
    installed = set()
    for line in re.findall(r"pip install ([^\n\\&]+)", trainer):
        words = shlex.split(line)
        for before, word in zip(["", *words], words, strict=False):
            if not word.startswith("-") and before != "--index-url":
                installed.add(re.split(r"[=<>]", word)[0])
    assert installed == {"torch", "pyarrow", "numpy", "tqdm"}
    trainer_sources = {
        s for sources, _ in dockerfile_copies(DEPLOY / "trainer.Dockerfile") for s in sources
    }
    assert trainer_sources == {
        "packer/__init__.py",
        "packer/contract",
        "trainer",
        "deploy/__init__.py",
        "deploy/cli/options.py",
        "deploy/cli/train.py",
        "deploy/train.sh",
    }


# ---------------------------------------------------------------------------------------
# The services, for real


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_node_args() -> list[str]:
    # Several Ray nodes on one host: each needs its own dashboard-agent port (a fixed
    # default). They must also start one after another: nodes that share a temp dir
    # pick their socket names from what exists, and two at once pick the same.
    return [f"--dashboard-agent-listen-port={free_port()}"]


def node_started(service: LocalService) -> Callable[[], bool]:
    return lambda: "Ray runtime started" in service.log()


def trainer_image_tree(root: Path) -> Path:
    """/app of the trainer image: exactly what trainer.Dockerfile copies."""
    app = root / "app"
    for sources, destination in dockerfile_copies(DEPLOY / "trainer.Dockerfile"):
        for source in sources:
            target = app / destination
            if destination.endswith("/"):
                target = target / Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, target)
    return app


def wait_until(
    condition: Callable[[], bool], what: str, service: LocalService, timeout: float = 180.0
) -> None:
    wait_for(
        condition,
        what,
        service.process,
        service.name,
        lambda: service.log()[-3000:],
        timeout,
        interval=0.5,
    )


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def stack() -> Iterator[LocalCompose]:
    # A short root: Ray puts unix sockets under its temp dir (108-byte path limit).
    root = Path(tempfile.mkdtemp(prefix="navit-compose-", dir="/tmp"))
    ports = {port: free_port() for port in (6379, 8265, 8000, 8815)}
    knobs = {
        "NAVIT_SAMPLE_IMAGES": "40",
        "NAVIT_SEQ_LEN": "256",
        "NAVIT_MAX_RES": "128",
        "NAVIT_BATCH_SIZE": "1",
        "NAVIT_LOG_LEVEL": "warning",
        "NAVIT_MODEL": "tiny",
        "NAVIT_STEPS": "30",
        "NAVIT_CKPT_EVERY": "5",
        "NAVIT_TRAINER_GPUS": "1",
        "RAY_WORKER_NUM_CPUS": "1",
    }
    local = LocalCompose(root, knobs, ports)
    yield local
    local.stop_all()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_compose_services_run_as_local_processes(stack: LocalCompose) -> None:
    # data-init writes the sample data set into the data volume.
    data = stack.start("data-init")
    assert data.process.wait(120) == 0, data.log()
    dataset = stack.root / "volumes/navit-data/sample"
    images = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*.jpg"))
    assert len(images) == 40

    # ray-head, then a worker and the packer (depends_on: ray-head healthy).
    head = stack.start("ray-head", extra_args=[*ray_node_args(), f"--temp-dir={stack.root}/ray"])
    wait_until(lambda: stack.is_healthy("ray-head"), "healthy", head)
    worker = stack.start("ray-worker", extra_args=ray_node_args())
    wait_until(node_started(worker), "started", worker)
    packer = stack.start("packer", env={"RAY_START_EXTRA_ARGS": " ".join(ray_node_args())})
    wait_until(lambda: stack.is_healthy("packer"), "healthy", packer)
    api = f"http://127.0.0.1:{stack.ports[8000]}"
    location = f"grpc://127.0.0.1:{stack.ports[8815]}"

    # An epoch streamed while the only Ray worker with CPUs (the head has none, as in
    # compose) dies: its raylet is killed after two batches, with fill tasks in flight
    # there and both streamers on it (NAVIT_STREAMERS, 2 by default). A worker is back
    # (compose restarts the container; here: the same command again), Ray restarts the
    # streamers there, and the trainer's client, asking the packer again at its cursor,
    # still gets every image of the epoch once.
    from trainer.data import iter_batches

    received: list[str] = []
    batches = 0
    for _, batch in iter_batches(location, Cursor(0, 1), end_epoch=1, prefetch=0):
        received += batch.image_ids
        batches += 1
        if batches == 2:
            raylets = [p for p in worker.members() if "/raylet/raylet " in cmdline(p)]
            assert len(raylets) == 1, [cmdline(p) for p in worker.members()]
            kill_and_replace_worker(stack, worker, raylets[0])
    assert batches > 4, "the epoch should outlast the worker's death"
    assert sorted(received) == images  # every image, once

    # The trainer, from exactly the files the trainer image holds, is killed after its
    # first checkpoint; the same command again (restart: on-failure) resumes from it.
    app = trainer_image_tree(stack.root)
    ckpt = stack.root / "volumes/navit-ckpt"
    env = {"PYTHONPATH": str(app)}
    trainer = stack.start("trainer", cwd=app, env=env)
    wait_until(lambda: (ckpt / "checkpoint.pt").exists(), "checkpointed", trainer)
    trainer.kill()
    first_run = read_metrics(ckpt / "metrics.jsonl")
    rerun = stack.start("trainer", cwd=app, env=env, log_name="trainer-2")
    command_lines = set()
    deadline = time.monotonic() + 240
    while rerun.process.poll() is None and time.monotonic() < deadline:
        command_lines |= {cmdline(p) for p in rerun.members()}
        time.sleep(0.1)
    assert rerun.process.wait(10) == 0, rerun.log()[-3000:]
    # deploy/train.sh found the checkpoint and resumed (torchrun's rank got --resume).
    assert any("deploy.cli.train" in c and "--resume" in c for c in command_lines), command_lines
    metrics = [r for r in read_metrics(ckpt / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == list(range(1, 31))
    assert_cursor_continues(metrics)
    assert len(first_run) >= 5  # the killed run got at least to its first checkpoint
    assert stack.is_healthy("trainer")  # metrics were written just now

    import httpx

    stats = httpx.get(f"{api}/stats", timeout=10).json()
    assert stats["images"] == 40 and stats["rejected_by_reason"] == {}
    assert 0.5 < stats["delivered_efficiency"] <= stats["packing_efficiency"] <= 1.0
    (rank,) = [r for r in stats["ranks"] if r["world_size"] == 1]
    assert rank["batches_sent"] >= batches + 30

    started = list(stack.started)
    stack.stop_all()
    assert not [pid for service in started for pid in service.members()]


def kill_and_replace_worker(stack: LocalCompose, worker: LocalService, raylet: int) -> None:
    os.kill(raylet, signal.SIGKILL)
    # `ray start --block` notices its raylet died and ends the node's other processes.
    worker.process.wait(60)
    replacement = stack.start("ray-worker", extra_args=ray_node_args(), log_name="ray-worker-2")
    wait_until(node_started(replacement), "started", replacement)
