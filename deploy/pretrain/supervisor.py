"""`Pretrain`: the supervisor of one local pretrain job (see deploy/pretrain/__init__.py).

    Pretrain(PretrainOptions("data/sample", trainers=2, training={"steps": 300})).run()

It starts the service (`navit serve ... --ready-file`), waits for the ready file and
/readyz, starts the trainer ranks, follows rank 0's metrics and the service's /stats,
restarts failed ranks from the checkpoint, and stops everything in order at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from deploy.cli.options import dataclass_argv
from deploy.pretrain.control_plane import ControlPlane
from deploy.pretrain.options import PretrainOptions
from deploy.pretrain.plot import write_plot
from deploy.pretrain.processes import Child, free_port, session_members
from deploy.pretrain.progress import (
    MetricsTail,
    ProgressLine,
    run_status,
    run_summary,
    stats_sample,
)
from deploy.pretrain.validation import VAL_DIR, pack_validation
from deploy.ready_file import ReadyFile
from trainer.config import TrainConfig

# Children carry this variable; their descendants (Ray's raylet and workers) inherit it,
# which lets a test (or an operator) find every process one run started.
RUN_ENV = "NAVIT_PRETRAIN_RUN"

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
SERVICE_START_TIMEOUT_S = 300.0  # a first index scan of a large folder takes a while
STATS_INTERVAL_S = 1.0
POLL_INTERVAL_S = 0.2
READY_FILE = "service-ready.json"

# Files of a previous run that a fresh run replaces (never anything else in the folder).
RUN_FILES = (
    "checkpoint.pt",
    "checkpoint.pt.tmp",
    "metrics.jsonl",
    "stats.json",
    "stats.jsonl",
    "events.jsonl",
    "pretrain.png",
    READY_FILE,
)
RUN_DIRS = ("state", "logs", VAL_DIR)


def navit(*args: str) -> list[str]:
    """`navit ARGS` from this interpreter's environment."""
    return [sys.executable, "-m", "deploy.cli", *args]


class Pretrain:
    """Runs one pretrain job: see the module docstring."""

    def __init__(self, options: PretrainOptions) -> None:
        self.options = options
        self.run_dir = Path(options.run_dir)
        self.run_id = uuid.uuid4().hex
        self.service: Child | None = None
        self.trainers: list[Child] = []
        self.control: ControlPlane | None = None
        self.trainer_config: TrainConfig = options.trainer_config(options.requested_flight)
        self.restarts = 0
        self.restart_steps: list[int] = []
        self.metrics = MetricsTail(self.run_dir / "metrics.jsonl")
        self.samples: list[dict[str, Any]] = []  # /stats over the run
        self.last_stats: dict[str, Any] | None = None
        self.stop_signal: int | None = None
        self.output = ProgressLine(self.trainer_config.steps, bar=options.progress)
        self._force = False
        self._events: TextIO | None = None
        self._stats_log: TextIO | None = None
        self._last_sample = 0.0
        self._started = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        """The whole job; the exit code (0 finished, 1 failed, 130/143 interrupted)."""
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
            self.output.say("second signal: killing every process now")
            for child in [*self.trainers, self.service]:
                if child is not None:
                    child.signal(signal.SIGKILL)
            return
        self.stop_signal = signum
        self.output.say(f"{signal.Signals(signum).name}: stopping trainers, then the service ...")

    def _run(self) -> int:
        self._prepare_run_dir()
        self._describe_dataset()
        if self.stop_signal is not None:  # Ctrl-C while the index loaded
            return self._exit_code(failed=False)
        if not self._start_service():
            return self._exit_code(failed=True)
        self._start_trainers(resume=self.options.resume and self._has_checkpoint())
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
            self.output.say(f"--resume: no checkpoint in {self.run_dir} yet; starting from step 0")
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self._events = open(self.run_dir / "events.jsonl", "a")  # noqa: SIM115
        self._stats_log = open(self.run_dir / "stats.jsonl", "a")  # noqa: SIM115
        self._event("run", run_id=self.run_id, options=self.options.describe())

    def _has_checkpoint(self) -> bool:
        return (self.run_dir / "checkpoint.pt").is_file()

    def _describe_dataset(self) -> None:
        # The index is loaded here once (and cached) for the class count; the service
        # then finds it in the cache instead of scanning the headers again.
        from packer.index.cache import load_index
        from packer.index.table import index_class_names, index_stats

        index = load_index(self.options.dataset)
        stats = index_stats(index)
        num_classes = self.trainer_config.num_classes
        if num_classes is None:
            labels = index.column("label").to_numpy()
            top = int(labels.max()) + 1 if len(labels) else 0
            num_classes = max(len(index_class_names(index)), top, 1)
            self.trainer_config = self.trainer_config.replace(num_classes=num_classes)
        self.output.say(
            f"dataset {self.options.dataset}: {stats['images']} images "
            f"({stats['valid']} readable), {num_classes} classes"
        )
        if self.options.val_fraction > 0:
            self._pack_validation(index)

    def _pack_validation(self, index: Any) -> None:
        """The held-out split into run_dir/val, scored by the trainers (validation.py)."""
        o = self.options
        val = pack_validation(index, o, self.run_dir)
        self.output.say(
            f"validation: {val.held_out} images held out (--val-fraction {o.val_fraction}, "
            f"--val-seed {o.val_seed}), {val.packed} packed at {val.resolution} px "
            f"into {val.folder}"
        )
        self._event("validation_packed", images=val.held_out, resolution=val.resolution)
        if val.packed == 0:
            self.output.say("validation: no readable held-out image; no validation scores")
        elif self.trainer_config.eval_source is None:  # a given --eval-source wins
            self.trainer_config = self.trainer_config.replace(eval_source=str(val.folder))

    def _env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, RUN_ENV: self.run_id, "PYTHONUNBUFFERED": "1", **extra}

    # -- the service -------------------------------------------------------------------

    def _start_service(self) -> bool:
        """Start `navit serve`; True once its ready file names it and /readyz answers."""
        o = self.options
        ready_path = self.run_dir / READY_FILE
        ready_path.unlink(missing_ok=True)  # one a crashed run left must not count
        argv = navit(
            *(["--verbose"] if o.verbose else []),
            "serve",
            o.dataset,
            f"--host={o.host}",
            f"--api-port={o.api_port}",
            f"--flight-port={o.flight_port}",
            f"--state-dir={self.run_dir / 'state'}",
            f"--ready-file={ready_path}",
            "--log-level=warning",
        )
        if o.num_cpus is not None:
            argv.append(f"--num-cpus={o.num_cpus}")
        if o.ray_address:
            argv.append(f"--ray-address={o.ray_address}")
        if o.config_file is not None:
            argv.append(f"--config={o.config_file}")
        argv += [f"--set={override}" for override in o.overrides]
        if o.val_fraction > 0:
            argv += [f"--holdout-fraction={o.val_fraction}", f"--holdout-seed={o.val_seed}"]
        # ray.init() with no address joins a cluster some `ray start` left on this
        # machine; a local job wants its own Ray, sized by --num-cpus.
        extra = {} if o.ray_address else {"RAY_ADDRESS": "local"}
        self.service = Child("service", argv, self._env(**extra), self.run_dir / "logs/service.log")
        self._event("service_started", pid=self.service.pid, argv=argv)
        self.output.say("starting the packer service (Ray, Flight, control plane) ...")
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline and self.stop_signal is None:
            if self.service.poll() is not None:
                self._service_failed()
                if "address already in use" in self.service.tail().lower():
                    self.output.say("a port is taken: pass --api-port/--flight-port (0: any)")
                return False
            ready = ReadyFile.read(ready_path)
            if ready is not None and ready.pid == self.service.pid:
                if self.control is None:
                    self.control = ControlPlane(ready.api)
                if self.control.ready():
                    self._on_service_ready(ready)
                    return True
            time.sleep(POLL_INTERVAL_S)
        if self.stop_signal is None:
            self.output.say(f"the service was not ready within {SERVICE_START_TIMEOUT_S:.0f} s:")
            self.output.say(self.service.tail(), prefix="  | ")
        return False

    def _on_service_ready(self, ready: ReadyFile) -> None:
        # The trainers speak plain grpc:// (the service's location says grpc+tcp://).
        flight = "grpc://" + ready.flight.split("://", 1)[1]
        self.trainer_config = self.trainer_config.replace(source=flight)
        self._event("service_ready", api=ready.api, flight=flight)
        self.output.say(f"control plane: {ready.api}  (dashboard; PATCH /config retunes packing)")
        self.output.say(f"packed batches: {flight}  (Arrow Flight)")

    def _service_failed(self) -> None:
        assert self.service is not None
        self.output.say(f"the service {self.service.exit_description()}:")
        self.output.say(self.service.tail(), prefix="  | ")

    def _stop_service(self) -> None:
        if self.service is None:
            return
        # SIGTERM to the service alone: it stops its streams and servers, then Ray; a
        # signal to its whole group would hit Ray's processes before the service is done.
        code = self.service.stop(grace_s=5.0 if self._force else 30.0, group=False)
        self._event("service_stopped", code=code)
        self.service = None

    # -- the trainers ------------------------------------------------------------------

    def _start_trainers(self, resume: bool) -> None:
        world = self.options.trainers
        master_port = str(free_port())  # a new one per start: the old may linger in TIME_WAIT
        cores = os.cpu_count() or 1
        self.trainers = []
        for rank in range(world):
            config = self.trainer_config.replace(rank=rank, resume=resume)
            argv = navit("train", *dataclass_argv(config))
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
        model = self.trainer_config.model
        self.output.say(f"started {world} trainer rank(s) ({model} model, {how})")

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
            failed = [t for t, c in zip(self.trainers, codes, strict=True) if c not in (None, 0)]
            if failed:
                if not self._restart(failed):
                    return True
            elif self.service is not None and self.service.poll() is not None:
                self._service_failed()
                return True
            time.sleep(POLL_INTERVAL_S)

    def _restart(self, failed: list[Child]) -> bool:
        """Restart every rank (DDP ranks cannot go on without one) from the checkpoint."""
        for trainer in failed:
            self._event("trainer_exited", name=trainer.name, pid=trainer.pid, code=trainer.poll())
            tail = trainer.tail(8)
            self.output.say(f"{trainer.name} {trainer.exit_description()}" + (":" if tail else ""))
            if tail:
                self.output.say(tail, prefix="  | ")
        if self.restarts >= self.options.max_restarts:
            self.output.say(f"giving up after {self.restarts} restart(s) (--max-restarts)")
            return False
        self.restarts += 1
        # The other ranks wait on the dead one in DDP's all-reduce: stop them all.
        self._stop_trainers()
        resume = self._has_checkpoint()
        step = self._checkpoint_step() if resume else 0
        self.restart_steps.append(step)
        self._event("restart", attempt=self.restarts, resume=resume, checkpoint_step=step)
        self.metrics.reset()  # the new rank 0 rewrites metrics.jsonl up to `step`
        self.output.say(f"restart {self.restarts}/{self.options.max_restarts} from step {step}")
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
            self._sample_stats()
            latest = self.metrics.latest
            if self.control is not None and latest is not None:
                self.control.report_trainer(latest, self.options.trainers)
        self.output.show(
            run_status(self.metrics.in_order(), self.last_stats, self.metrics.evals_in_order())
        )

    def _sample_stats(self) -> None:
        stats = self.control.stats() if self.control is not None else None
        if stats is None:
            return
        self.last_stats = stats
        latest = self.metrics.latest
        sample = stats_sample(
            stats, latest["step"] if latest else 0, time.monotonic() - self._started
        )
        self.samples.append(sample)
        if self._stats_log is not None:
            self._stats_log.write(json.dumps(sample) + "\n")
            self._stats_log.flush()

    # -- the end -----------------------------------------------------------------------

    def _finish(self, failed: bool) -> None:
        interrupted = self.stop_signal is not None
        self._stop_trainers(grace_s=3.0 if self._force else 10.0)
        self.metrics.read()
        self.output.show(
            run_status(self.metrics.in_order(), self.last_stats, self.metrics.evals_in_order())
        )
        self.output.close()
        self._sample_stats()
        if self.last_stats is not None:
            text = json.dumps(self.last_stats, indent=2) + "\n"
            (self.run_dir / "stats.json").write_text(text)
        self._stop_service()
        plot = None
        try:
            records = self.metrics.records
            plot = write_plot(
                self.run_dir, records, self.samples, self.restart_steps, self.metrics.evals
            )
        except Exception as error:  # noqa: BLE001 - the plot must not hide the run's result
            self.output.say(f"could not draw the plot: {error}")
        state = "interrupted" if interrupted else "failed" if failed else "finished"
        self._event("end", state=state, restarts=self.restarts)
        outputs = ["metrics.jsonl", "stats.json", "checkpoint.pt", plot.name if plot else None]
        present = [name for name in outputs if name and (self.run_dir / name).exists()]
        summary = run_summary(
            state,
            time.monotonic() - self._started,
            self.metrics.in_order(),
            self.trainer_config.steps,
            self.last_stats,
            self.restart_steps,
            self.metrics.evals_in_order(),
        )
        summary.append(f"in {self.run_dir}/: {', '.join(present)}")
        o = self.options
        if state == "finished" and o.val_fraction > 0 and self._has_checkpoint():
            summary.append(
                "accuracy against cost at other resolutions: navit eval --ckpt "
                f"{self.run_dir / 'checkpoint.pt'} --source {o.dataset} "
                f"--val-fraction {o.val_fraction} --val-seed {o.val_seed}"
            )
        if state != "finished" and self._has_checkpoint():
            summary.append("to continue from the checkpoint: the same command with --resume")
        self.output.say("\n".join(summary))

    def _shutdown(self) -> None:
        """Whatever happened (an exception included), leave no child behind."""
        for trainer in self.trainers:
            if trainer.poll() is None or session_members(trainer.pid):
                trainer.stop(3.0)
        if self.service is not None:
            self.service.stop(10.0, group=False)
            self.service = None
        self.output.close()
        for handle in (self._events, self._stats_log, self.control):
            if handle is not None:
                handle.close()
        self._events = self._stats_log = self.control = None

    def _event(self, kind: str, **values: Any) -> None:
        """A line of events.jsonl: what the supervisor did, with process ids."""
        if self._events is None:
            return
        record = {"t": round(time.time(), 3), "event": kind, **values}
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()
