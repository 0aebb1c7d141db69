"""`navit pretrain DATASET`: the whole pretrain job on one machine, in one command.

    navit pretrain data/sample --trainers 2 --steps 300 --set seq_len=256 --set max_res=128

It starts the packer service (`navit serve`: embedded local Ray, control plane, Flight)
and N trainer ranks (`navit train --source grpc://127.0.0.1:PORT --rank r --world-size
N`; DDP over gloo on CPU when N > 1) as child processes, shows one progress line (step,
loss, images/s, packing efficiency) from the trainers' metrics.jsonl and the service's
/stats, and on the end, on Ctrl-C or on SIGTERM stops every process it started.

Why child processes rather than the service in this process: each child gets its own
session, so the terminal's Ctrl-C reaches only this supervisor, which then stops the
trainers first and the service (with its Ray) last, in order; the service runs the very
command the cluster's `packer` container runs; and a session is the unit we can sweep
for leftovers (Ray workers put themselves in their own process groups, but they stay in
the session). Each child also asks the kernel for SIGTERM should this process die
without cleaning up (PR_SET_PDEATHSIG), so even `kill -9` of the supervisor leaves none.

A trainer that dies (killed, out of memory) is restarted together with the other ranks
(DDP ranks cannot continue without it) from the last checkpoint with `--resume`, up to
`--max-restarts` times; it continues from its checkpoint's data cursor, so no batch is
lost or repeated.

The run directory (`--run-dir`, default runs/pretrain) keeps:
- `metrics.jsonl`, `checkpoint.pt`: the trainer's (rank 0's) per-step metrics and its
  checkpoint (model, optimizer, data cursor);
- `stats.json`: the service's GET /stats at the end; `stats.jsonl`: /stats samples over
  the run (efficiency, images/s, config version);
- `pretrain.png`: loss and packing efficiency over the run;
- `events.jsonl`: what the supervisor did (starts, exits, restarts) with process ids;
- `state/`: the service's config history and rank cursors (a PATCH survives `--resume`);
- `logs/service.log`, `logs/trainer-R.log`: the children's output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

# Children carry this variable; their descendants (Ray's raylet and workers) inherit it,
# which lets a test (or an operator) find every process one run started.
RUN_ENV = "NAVIT_PRETRAIN_RUN"

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
SERVICE_START_TIMEOUT_S = 300.0  # a first index scan of a large folder takes a while
STATS_INTERVAL_S = 1.0
POLL_INTERVAL_S = 0.2

# Files of a previous run that a fresh run replaces (never anything else in the folder).
RUN_FILES = (
    "checkpoint.pt",
    "checkpoint.pt.tmp",
    "metrics.jsonl",
    "stats.json",
    "stats.jsonl",
    "events.jsonl",
    "pretrain.png",
)
RUN_DIRS = ("state", "logs")


# ---------------------------------------------------------------------------------------
# Command line


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """The `navit pretrain` flags."""
    from packer.commands import add_config_arguments

    add = parser.add_argument
    add("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    add("--trainers", type=int, default=1, help="ranks (DDP when > 1; one GPU each on GPUs)")
    add("--model", default="tiny", help="model size: tiny, s16, b16, l16")
    add("--steps", type=int, default=300, help="optimizer steps of each rank")
    add("--run-dir", type=Path, default=Path("runs/pretrain"), help="outputs (see above)")
    add("--resume", action="store_true", help="continue the run in --run-dir")
    add("--host", default="127.0.0.1", help="interface of the control plane and Flight")
    add("--api-port", type=int, default=8000, help="control plane port (0: any free one)")
    add("--flight-port", type=int, default=8815, help="Flight port (0: any free one)")
    add("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    add("--ray-address", default=None, help="use this Ray cluster instead of a local Ray")
    add("--lr", type=float, default=2e-3, help="peak learning rate")
    add("--warmup-steps", type=int, default=None, help="default: a tenth of --steps")
    add("--ckpt-every", type=int, default=50, help="checkpoint every N steps")
    add("--num-classes", type=int, default=None, help="default: from the dataset's labels")
    add("--max-restarts", type=int, default=3, help="restarts of failed trainers")
    add("--no-progress", action="store_true", help="a plain status line every 10 s")
    add_config_arguments(parser)


def run_pretrain(args: argparse.Namespace) -> int:
    """Entry point of `navit pretrain`; returns the exit code (130 after Ctrl-C)."""
    options = PretrainOptions(
        dataset=args.dataset,
        trainers=args.trainers,
        model=args.model,
        steps=args.steps,
        run_dir=args.run_dir,
        resume=args.resume,
        host=args.host,
        api_port=args.api_port,
        flight_port=args.flight_port,
        num_cpus=args.num_cpus,
        ray_address=args.ray_address,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ckpt_every=args.ckpt_every,
        num_classes=args.num_classes,
        max_restarts=args.max_restarts,
        progress=not args.no_progress,
        overrides=list(args.overrides or []),
        config_file=args.config,
    )
    return Pretrain(options).run()


@dataclass
class PretrainOptions:
    dataset: str
    trainers: int = 1
    model: str = "tiny"
    steps: int = 300
    run_dir: Path = Path("runs/pretrain")
    resume: bool = False
    host: str = "127.0.0.1"
    api_port: int = 8000
    flight_port: int = 8815
    num_cpus: int | None = None
    ray_address: str | None = None
    lr: float = 2e-3
    warmup_steps: int | None = None
    ckpt_every: int = 50
    num_classes: int | None = None
    max_restarts: int = 3
    progress: bool = True
    overrides: list[str] = field(default_factory=list)
    config_file: Path | None = None

    def check(self) -> None:
        from packer.config import ConfigError
        from trainer.model import MODEL_SIZES

        if self.trainers < 1:
            raise ConfigError("trainers", f"must be at least 1, got {self.trainers}")
        if self.steps < 1:
            raise ConfigError("steps", f"must be at least 1, got {self.steps}")
        if self.model not in MODEL_SIZES:
            raise ConfigError("model", f"unknown {self.model!r}; choose from {sorted(MODEL_SIZES)}")


# ---------------------------------------------------------------------------------------
# Child processes


def _child_preexec(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        # Linux: the kernel sends SIGTERM to this child when its parent dies, so a
        # supervisor killed with -9 leaves no service or trainer behind. Elsewhere the
        # supervisor's own cleanup is all there is.
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid` (Linux /proc; [] elsewhere)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, session, ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class Child:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: BinaryIO = open(log_path, "ab")  # noqa: SIM115 closed in stop()/kill()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C at the terminal reaches only the supervisor
            preexec_fn=_child_preexec(os.getpid()),
        )
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int, group: bool = True) -> None:
        try:
            if group:
                os.killpg(self.pid, signum)
            elif self.process.poll() is None:
                self.process.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace_s: float, group: bool = True) -> int | None:
        """SIGTERM (the group, or only the leader so it can shut its own children down
        in order), SIGKILL after `grace_s`, then sweep what is left of the session."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM, group=group)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        self.sweep()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait()
        self.sweep(grace_s=0.0)
        self._log.close()

    def sweep(self, grace_s: float = 3.0) -> None:
        """End what the child left in its session: Ray workers leave its process group
        but not its session, and exit by themselves soon after their raylet."""
        deadline = time.monotonic() + grace_s
        while (left := session_members(self.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------
# Reading what the children write


class MetricsTail:
    """The step records of metrics.jsonl, read incrementally.

    A resumed trainer rewrites the file (keeping lines up to its checkpoint): the
    supervisor calls `reset()` when it restarts trainers, and a file that shrank or
    changed inode is read again from the start as well.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[int, dict[str, Any]] = {}
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def reset(self) -> None:
        """Forget what was read: the next read() starts from the top of the file."""
        self._inode, self._offset, self._partial = None, 0, b""
        self.records.clear()

    def read(self) -> list[dict[str, Any]]:
        """New step records since the last call (all of them after a rewrite)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self.reset()
            self._inode = stat.st_ino
        if stat.st_size == self._offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = self._partial + handle.read()
        self._offset += len(data) - len(self._partial)
        *lines, self._partial = data.split(b"\n")
        new = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "loss" in record and "step" in record:
                self.records[int(record["step"])] = record
                new.append(record)
        return new

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.records[max(self.records)] if self.records else None


def smoothed(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average (debiased, so the first values are not pulled to 0)."""
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


# ---------------------------------------------------------------------------------------
# The supervisor


class Pretrain:
    """Runs one pretrain job: see the module docstring."""

    def __init__(self, options: PretrainOptions) -> None:
        options.check()
        self.options = options
        self.run_dir = Path(options.run_dir)
        self.run_id = uuid.uuid4().hex
        self.service: Child | None = None
        self.trainers: list[Child] = []
        self.api_url = ""
        self.flight_url = ""
        self.num_classes = options.num_classes
        self.restarts = 0
        self.metrics = MetricsTail(self.run_dir / "metrics.jsonl")
        self.samples: list[dict[str, Any]] = []  # /stats over the run
        self.last_stats: dict[str, Any] | None = None
        self.restart_steps: list[int] = []
        self.stop_signal: int | None = None
        self._force = False
        self._http: Any = None
        self._events: TextIO | None = None
        self._stats_log: TextIO | None = None
        self._bar: Any = None
        self._last_status = 0.0
        self._last_sample = 0.0
        self._reported_step = -1
        self._started = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in EXIT_INTERRUPTED}
        try:
            return self._run()
        finally:
            self._shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is not None:
            self._force = True  # a second Ctrl-C: no more waiting, kill everything
            self._say("second signal: killing every process now")
            for child in [*self.trainers, self.service]:
                if child is not None:
                    child.signal(signal.SIGKILL)
            return
        self.stop_signal = signum
        self._say(f"{signal.Signals(signum).name}: stopping trainers, then the service ...")

    def _run(self) -> int:
        options = self.options
        self._prepare_run_dir()
        self._describe_dataset()
        if self.stop_signal is not None:  # Ctrl-C while the index loaded
            return self._exit_code(failed=False)
        if not self._start_service():
            return self._exit_code(failed=True)
        self._say(f"control plane: {self.api_url}  (dashboard; PATCH /config retunes packing)")
        self._say(f"packed batches: {self.flight_url}  (Arrow Flight)")
        self._start_trainers(resume=options.resume and self._has_checkpoint())
        failed = self._supervise()
        self._finish(failed)
        return self._exit_code(failed)

    def _exit_code(self, failed: bool) -> int:
        if self.stop_signal is not None:
            return EXIT_INTERRUPTED[signal.Signals(self.stop_signal)]
        return 1 if failed else 0

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.options.resume:
            # A fresh run: what an earlier run left here would mix with this one's output
            # (and its config history in state/ would replace this run's --set values).
            for name in RUN_FILES:
                (self.run_dir / name).unlink(missing_ok=True)
            for name in RUN_DIRS:
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
        elif not self._has_checkpoint():
            self._say(f"--resume: no checkpoint in {self.run_dir} yet; starting from step 0")
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self._events = open(self.run_dir / "events.jsonl", "a")  # noqa: SIM115
        self._stats_log = open(self.run_dir / "stats.jsonl", "a")  # noqa: SIM115
        self._event("run", run_id=self.run_id, options=_jsonable(vars(self.options)))

    def _has_checkpoint(self) -> bool:
        return (self.run_dir / "checkpoint.pt").is_file()

    def _describe_dataset(self) -> None:
        # The index is loaded here once (and cached) for the class count; the service
        # then finds it in the cache instead of scanning the headers again.
        from packer.index import index_class_names, index_stats, load_index

        index = load_index(self.options.dataset)
        stats = index_stats(index)
        if self.num_classes is None:
            labels = index.column("label").to_numpy()
            top = int(labels.max()) + 1 if len(labels) else 0
            self.num_classes = max(len(index_class_names(index)), top, 1)
        self._say(
            f"dataset {self.options.dataset}: {stats['images']} images "
            f"({stats['valid']} readable), {self.num_classes} classes"
        )

    # -- the service -------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, RUN_ENV: self.run_id, "PYTHONUNBUFFERED": "1", **extra}
        return env

    def _navit(self, *args: str) -> list[str]:
        # `python -m packer.cli` is `navit` itself, from this interpreter's environment.
        return [sys.executable, "-m", "packer.cli", *args]

    def _start_service(self) -> bool:
        o = self.options
        argv = self._navit(
            "serve",
            o.dataset,
            f"--host={o.host}",
            f"--api-port={o.api_port}",
            f"--flight-port={o.flight_port}",
            f"--state-dir={self.run_dir / 'state'}",
            "--log-level=warning",
        )
        if o.num_cpus is not None:
            argv.append(f"--num-cpus={o.num_cpus}")
        if o.ray_address:
            argv.append(f"--ray-address={o.ray_address}")
        if o.config_file is not None:
            argv.append(f"--config={o.config_file}")
        argv += [f"--set={override}" for override in o.overrides]
        extra = {}
        if not o.ray_address:
            # ray.init() with no address joins a cluster some `ray start` left on this
            # machine; a local job wants its own Ray, sized by --num-cpus.
            extra["RAY_ADDRESS"] = "local"
        self.service = Child("service", argv, self._env(**extra), self.run_dir / "logs/service.log")
        self._event("service_started", pid=self.service.pid, argv=argv)
        self._say("starting the packer service (Ray, Flight, control plane) ...")
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline and self.stop_signal is None:
            serving = self._serving_line()
            if serving is not None:
                self.api_url = serving["api"]
                flight = serving["flight"]
                self.flight_url = "grpc://" + flight.split("://", 1)[1]
                self._event("service_ready", api=self.api_url, flight=self.flight_url)
                return self._connect_api()
            if self.service.poll() is not None:
                self._say(f"the service exited with code {self.service.poll()}:")
                self._say(self.service.tail(), prefix="  | ")
                if "address already in use" in self.service.tail().lower():
                    self._say("a port is taken: pass --api-port/--flight-port (0 picks free ones)")
                return False
            time.sleep(POLL_INTERVAL_S)
        if self.stop_signal is None:
            self._say(f"the service did not start within {SERVICE_START_TIMEOUT_S:.0f} s:")
            self._say(self.service.tail(), prefix="  | ")
        return False

    def _serving_line(self) -> dict[str, Any] | None:
        assert self.service is not None
        try:
            text = self.service.log_path.read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith('{"serving"'):
                try:
                    return json.loads(line)["serving"]
                except (ValueError, KeyError):
                    return None
        return None

    def _connect_api(self) -> bool:
        import httpx

        token = os.environ.get("NAVIT_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.api_url, timeout=5.0, headers=headers)
        return True

    def _get_stats(self) -> dict[str, Any] | None:
        if self._http is None:
            return None
        try:
            response = self._http.get("/stats")
            response.raise_for_status()
            return response.json()
        except Exception:  # noqa: BLE001 - a missed sample is no reason to stop the job
            return None

    # -- the trainers ------------------------------------------------------------------

    def _start_trainers(self, resume: bool) -> None:
        o = self.options
        world = o.trainers
        master_port = str(free_port())  # a new one per start: the old may linger in TIME_WAIT
        cores = os.cpu_count() or 1
        warmup = o.warmup_steps if o.warmup_steps is not None else max(1, o.steps // 10)
        self.trainers = []
        for rank in range(world):
            argv = self._navit(
                "train",
                f"--source={self.flight_url}",
                f"--model={o.model}",
                f"--steps={o.steps}",
                f"--ckpt={self.run_dir}",
                f"--ckpt-every={o.ckpt_every}",
                f"--rank={rank}",
                f"--world-size={world}",
                f"--num-classes={self.num_classes}",
                f"--lr={o.lr}",
                f"--warmup-steps={warmup}",
                "--no-progress",
            )
            if resume:
                argv.append("--resume")
            env = self._env(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=master_port,
                LOCAL_RANK=str(rank),  # one GPU per rank where there are GPUs
            )
            # N ranks on one machine: each gets its share of the cores, not all of them.
            env.setdefault("OMP_NUM_THREADS", str(max(1, cores // world)))
            log_path = self.run_dir / f"logs/trainer-{rank}.log"
            self.trainers.append(Child(f"trainer-{rank}", argv, env, log_path))
        self._event(
            "trainers_started",
            resume=resume,
            pids=[t.pid for t in self.trainers],
            argv=self.trainers[0].argv,
        )
        how = "resuming from the checkpoint" if resume else "from step 0"
        self._say(f"started {world} trainer rank(s) ({o.model} model, {how})")

    def _stop_trainers(self, grace_s: float = 10.0) -> None:
        for trainer in self.trainers:
            trainer.signal(signal.SIGTERM)
        for trainer in self.trainers:
            trainer.stop(grace_s)

    def _supervise(self) -> bool:
        """Until the trainers finish (False) or fail past the restart budget (True)."""
        while True:
            if self.stop_signal is not None:
                return False
            self._update()
            codes = [t.poll() for t in self.trainers]
            if all(code == 0 for code in codes):
                return False
            failed = [
                (t, c) for t, c in zip(self.trainers, codes, strict=True) if c not in (None, 0)
            ]
            if failed:
                if not self._restart(failed):
                    return True
            elif self.service is not None and self.service.poll() is not None:
                self._say(f"the service exited with code {self.service.poll()}:")
                self._say(self.service.tail(), prefix="  | ")
                return True
            time.sleep(POLL_INTERVAL_S)

    def _restart(self, failed: list[tuple[Child, int]]) -> bool:
        for trainer, code in failed:
            self._event("trainer_exited", name=trainer.name, pid=trainer.pid, code=code)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
            tail = trainer.tail(8)
            self._say(f"{trainer.name} {how}" + (":" if tail else ""))
            if tail:
                self._say(tail, prefix="  | ")
        if self.restarts >= self.options.max_restarts:
            self._say(f"giving up after {self.restarts} restart(s) (--max-restarts)")
            return False
        self.restarts += 1
        # The other ranks wait on the dead one in DDP's all-reduce: stop them all.
        self._stop_trainers()
        resume = self._has_checkpoint()
        step = self._checkpoint_step() if resume else 0
        self.restart_steps.append(step)
        self._event("restart", attempt=self.restarts, resume=resume, checkpoint_step=step)
        self.metrics.reset()  # the new rank 0 rewrites metrics.jsonl up to `step`
        self._say(f"restart {self.restarts}/{self.options.max_restarts} from step {step}")
        self._start_trainers(resume=resume)
        return True

    def _checkpoint_step(self) -> int:
        import torch

        state = torch.load(self.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        return int(state["step"])

    # -- progress ----------------------------------------------------------------------

    def _update(self) -> None:
        self.metrics.read()
        now = time.monotonic()
        if now - self._last_sample >= STATS_INTERVAL_S:
            self._last_sample = now
            stats = self._get_stats()
            if stats is not None:
                self.last_stats = stats
                self._sample(stats)
            self._report_trainer()
        self._show()

    def _sample(self, stats: dict[str, Any]) -> None:
        latest = self.metrics.latest
        sample = {
            "t": round(time.monotonic() - self._started, 3),
            "step": latest["step"] if latest else 0,
            "efficiency": stats.get("efficiency", 0.0),
            "efficiency_last_minute": stats["throughput"]["last_minute"]["efficiency"],
            "images_per_s": stats["throughput"]["last_minute"]["images_per_s"],
            "images": stats["throughput"]["run"]["images"],
            "config_version": stats.get("config_version"),
        }
        self.samples.append(sample)
        if self._stats_log is not None:
            self._stats_log.write(json.dumps(sample) + "\n")
            self._stats_log.flush()

    def _report_trainer(self) -> None:
        """Tell the control plane how rank 0's steps go (its dashboard shows whether the
        trainers wait for data); the trainer itself does not post reports."""
        latest = self.metrics.latest
        if self._http is None or latest is None or latest["step"] == self._reported_step:
            return
        self._reported_step = latest["step"]
        report = {
            "step": latest["step"],
            "step_time_s": latest.get("step_s", 0.0),
            "data_wait_s": min(latest.get("data_wait_s", 0.0), latest.get("step_s", 0.0)),
            "world_size": self.options.trainers,
            "epoch": latest.get("epoch"),
            "batch": max(0, latest.get("next_batch", 1) - 1),
            "samples_per_s": latest.get("images_per_s"),
            "tokens_per_s": latest.get("tokens_per_s"),
            "loss": latest.get("loss"),
        }
        if not all(math.isfinite(v) for v in report.values() if isinstance(v, float)):
            return
        # The report is informative only: a failed POST is no reason to stop the job.
        with contextlib.suppress(Exception):
            self._http.post("/trainers/0/report", json=report)

    def _status(self) -> dict[str, Any]:
        records = [self.metrics.records[s] for s in sorted(self.metrics.records)]
        recent = records[-20:]
        status: dict[str, Any] = {"step": records[-1]["step"] if records else 0}
        if recent:
            status["loss"] = sum(r["loss"] for r in recent) / len(recent)
            status["accuracy"] = sum(r["accuracy"] for r in recent) / len(recent)
        if self.last_stats is not None:
            minute = self.last_stats["throughput"]["last_minute"]
            status["images_per_s"] = minute["images_per_s"]
            status["images_delivered"] = self.last_stats["throughput"]["run"]["images"]
            status["efficiency"] = self.last_stats["efficiency"]
            status["config_version"] = self.last_stats["config_version"]
        return status

    def _show(self) -> None:
        status = self._status()
        fields = []
        if "loss" in status:
            fields.append(f"loss {status['loss']:.3f}")
            fields.append(f"acc {status['accuracy']:.2f}")
        if not status.get("images_delivered"):
            fields.append("waiting for the first batches")
        elif "images_per_s" in status:
            fields.append(f"{status['images_per_s']:.0f} img/s")
            fields.append(f"packing {100 * status['efficiency']:.1f}%")
            if status["config_version"] > 1:
                fields.append(f"config v{status['config_version']}")
        if self.options.progress:
            if self._bar is None:
                from tqdm import tqdm

                tqdm.monitor_interval = 0  # no monitor thread: children are forked later
                self._bar = tqdm(total=self.options.steps, unit="step", desc="pretrain")
            self._bar.n = status["step"]
            self._bar.set_postfix_str(" | ".join(fields), refresh=False)
            self._bar.refresh()
        elif time.monotonic() - self._last_status >= 10.0:
            self._last_status = time.monotonic()
            line = f"step {status['step']}/{self.options.steps}"
            self._say(" | ".join([line, *fields]))

    # -- the end -----------------------------------------------------------------------

    def _finish(self, failed: bool) -> None:
        interrupted = self.stop_signal is not None
        self._stop_trainers(grace_s=3.0 if self._force else 10.0)
        self.metrics.read()
        self._show()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        stats = self._get_stats() or self.last_stats
        if stats is not None:
            self._sample(stats)
            (self.run_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        self._stop_service()
        plot = None
        try:
            plot = write_plot(self.run_dir, self.metrics.records, self.samples, self.restart_steps)
        except Exception as error:  # noqa: BLE001 - the plot must not hide the run's result
            self._say(f"could not draw the plot: {error}")
        state = "interrupted" if interrupted else "failed" if failed else "finished"
        self._event("end", state=state, restarts=self.restarts)
        self._summary(state, stats, plot)

    def _stop_service(self) -> None:
        if self.service is None:
            return
        # SIGTERM to the service alone: it stops its streams and servers, then Ray; a
        # signal to its whole group would hit Ray's processes before the service is done.
        code = self.service.stop(grace_s=5.0 if self._force else 30.0, group=False)
        self._event("service_stopped", code=code)
        self.service = None

    def _summary(self, state: str, stats: dict[str, Any] | None, plot: Path | None) -> None:
        records = [self.metrics.records[s] for s in sorted(self.metrics.records)]
        elapsed = time.monotonic() - self._started
        self._say(f"{state} after {elapsed:.0f} s")
        if records:
            first = records[: min(10, len(records))]
            last = records[-min(10, len(records)) :]
            mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
            self._say(
                f"step {records[-1]['step']}/{self.options.steps}: loss {mean(first, 'loss'):.3f}"
                f" -> {mean(last, 'loss'):.3f} (mean of first/last {len(last)} steps), "
                f"accuracy {mean(first, 'accuracy'):.2f} -> {mean(last, 'accuracy'):.2f}"
            )
        if stats is not None:
            run = stats["throughput"]["run"]
            rejected = sum(stats.get("rejected_by_reason", {}).values())
            self._say(
                f"packing efficiency {100 * stats['efficiency']:.1f}% (real tokens / all), "
                f"{run['images']} images delivered at {run['images_per_s']:.0f} img/s, "
                f"{rejected} rejected, config version {stats['config_version']}"
            )
        if self.restarts:
            self._say(
                f"trainers restarted {self.restarts} time(s), from steps {self.restart_steps}"
            )
        outputs = ["metrics.jsonl", "stats.json", "checkpoint.pt", plot.name if plot else None]
        present = [name for name in outputs if name and (self.run_dir / name).exists()]
        self._say(f"in {self.run_dir}/: {', '.join(present)}")
        if state != "finished" and self._has_checkpoint():
            self._say("to continue from the checkpoint: the same command with --resume")

    def _shutdown(self) -> None:
        """Whatever happened (an exception included), leave no child behind."""
        for trainer in self.trainers:
            if trainer.poll() is None or session_members(trainer.pid):
                trainer.stop(3.0)
        if self.service is not None:
            self.service.stop(10.0, group=False)
            self.service = None
        if self._bar is not None:
            self._bar.close()
        for handle in (self._events, self._stats_log, self._http):
            if handle is not None:
                handle.close()
        self._events = self._stats_log = self._http = None

    # -- output ------------------------------------------------------------------------

    def _say(self, message: str, prefix: str = "") -> None:
        text = "\n".join(prefix + line for line in message.splitlines())
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def _event(self, kind: str, **values: Any) -> None:
        if self._events is None:
            return
        record = {"t": round(time.time(), 3), "event": kind, **values}
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


# ---------------------------------------------------------------------------------------
# The plot


def write_plot(
    run_dir: Path,
    records: dict[int, dict[str, Any]],
    samples: list[dict[str, Any]],
    restart_steps: Sequence[int] = (),
) -> Path | None:
    """run_dir/pretrain.png: loss (top) and packing efficiency (bottom) against the step.

    Efficiency per step is 1 - pad_fraction of rank 0's batch; the service's cumulative
    efficiency from the /stats samples is drawn over it. A dashed line marks a packing
    config change (PATCH), a dotted one a trainer restart.
    """
    steps = sorted(records)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    losses = [records[s]["loss"] for s in steps]
    efficiency = [1.0 - records[s].get("pad_fraction", 0.0) for s in steps]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    top.plot(steps, smoothed(losses), color="tab:blue", linewidth=2, label="loss (EMA)")
    top.set_ylabel("training loss")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    bottom.plot(steps, efficiency, color="tab:green", alpha=0.3, linewidth=1, label="batch")
    bottom.plot(steps, smoothed(efficiency), color="tab:green", linewidth=2, label="batch (EMA)")
    cumulative = [(s["step"], s["efficiency"]) for s in samples if s["step"] and s["efficiency"]]
    if cumulative:
        xs, ys = zip(*cumulative, strict=True)
        bottom.plot(xs, ys, color="black", linewidth=1.5, label="service, cumulative")
    bottom.set_ylabel("packing efficiency\n(real tokens / all)")
    bottom.set_xlabel("step")
    low = min(min(efficiency), *(y for _, y in cumulative)) if cumulative else min(efficiency)
    bottom.set_ylim(max(0.0, low - 0.05), 1.005)
    bottom.legend(loc="lower right")
    bottom.grid(alpha=0.3)
    versions = [(s, records[s].get("config_version")) for s in steps]
    for (_, before), (step, after) in zip(versions, versions[1:], strict=False):
        if after != before:
            for axis in (top, bottom):
                axis.axvline(step, color="gray", linestyle="--", linewidth=1)
            bottom.annotate(f"config v{after}", (step, 1.0), fontsize=8, ha="left", va="top")
    for step in restart_steps:
        for axis in (top, bottom):
            axis.axvline(step, color="red", linestyle=":", linewidth=1)
    figure.suptitle(f"navit pretrain: {len(steps)} steps")
    figure.tight_layout()
    path = run_dir / "pretrain.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
