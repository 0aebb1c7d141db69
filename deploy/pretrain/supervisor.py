"""`Pretrain`: the supervisor of one local pretrain job (see deploy/pretrain/__init__.py).

    Pretrain(PretrainOptions("data/sample", trainers=2, training={"steps": 300})).run()

It starts the service (service_child.py) and waits until it is ready, starts the trainer
ranks (trainer_ranks.py), follows rank 0's metrics and the service's /stats, restarts
failed ranks from the checkpoint, and stops everything in order at the end. What it
keeps on disk: run_dir.py.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

from deploy.pretrain.options import PretrainOptions
from deploy.pretrain.plot import write_plot
from deploy.pretrain.processes import Child
from deploy.pretrain.progress import ProgressLine, run_summary
from deploy.pretrain.run_dir import READY_FILE, RunDir
from deploy.pretrain.service_child import failure_lines, start_service
from deploy.pretrain.trainer_ranks import TrainerRanks
from deploy.pretrain.validation import pack_validation
from deploy.pretrain.watch import RunWatch
from deploy.ready_file import ReadyFile
from trainer.config import CHECKPOINT_NAME, METRICS_NAME, TrainConfig

__all__ = ["READY_FILE", "RUN_ENV", "Pretrain"]

# Children carry this variable; their descendants (Ray's raylet and workers) inherit it,
# which lets a test (or an operator) find every process one run started.
RUN_ENV = "NAVIT_PRETRAIN_RUN"

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
# A trainer that exits with this code refused what it was asked (`navit train`: a bad flag,
# a --num-classes the data contradicts): a restart would fail the same way.
EXIT_USAGE = 2
POLL_INTERVAL_S = 0.2


class Pretrain:
    """Runs one pretrain job: see the module docstring."""

    def __init__(self, options: PretrainOptions) -> None:
        self.options = options
        self.run_dir = RunDir(options.run_dir)
        self.run_id = uuid.uuid4().hex
        self.service: Child | None = None
        env = {**os.environ, RUN_ENV: self.run_id, "PYTHONUNBUFFERED": "1"}
        self.env = env
        self.ranks = TrainerRanks(self.run_dir, env)
        self.trainer_config: TrainConfig = options.trainer_config(options.requested_flight)
        self.restarts = 0
        self.restart_steps: list[int] = []
        self.stop_signal: int | None = None
        self.usage_error = False
        self.evaluated = "held-out images"  # what the trainers' validation scores
        self.output = ProgressLine(self.trainer_config.steps, bar=options.progress)
        self.watch = RunWatch(self.run_dir, self.output)
        self._force = False

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
            self.ranks.kill()
            if self.service is not None:
                self.service.signal(signal.SIGKILL)
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
        self._start_trainers(resume=self.options.resume and self.run_dir.has_checkpoint())
        failed = self._supervise()
        self._finish(failed)
        return self._exit_code(failed)

    def _exit_code(self, failed: bool) -> int:
        if self.stop_signal is not None:
            return EXIT_INTERRUPTED[signal.Signals(self.stop_signal)]
        if self.usage_error:
            return EXIT_USAGE
        return 1 if failed else 0

    def _prepare_run_dir(self) -> None:
        if not self.options.resume:
            self.run_dir.clear_previous_run()
        elif not self.run_dir.has_checkpoint():
            path = self.run_dir.path
            self.output.say(f"--resume: no checkpoint in {path} yet; starting from step 0")
        self.run_dir.open()
        self.run_dir.event("run", run_id=self.run_id, options=self.options.describe())

    def _describe_dataset(self) -> None:
        # The index is loaded here once (and cached); the service then finds it in the
        # cache instead of scanning the headers again. The trainers size their heads from
        # the class names the stream carries.
        from packer.index.build import IndexOptions
        from packer.index.cache import load_index
        from packer.index.classes import class_summary
        from packer.index.image_index import index_stats

        index = load_index(
            self.options.dataset, options=IndexOptions(verify_sizes=self.options.verify_sizes)
        )
        stats = index_stats(index)
        classes = class_summary(index, self.options.dataset)
        self.output.say(
            f"dataset {self.options.dataset}: {stats['images']} images "
            f"({stats['valid']} readable), {classes.line()}"
        )
        for warning in classes.warnings:
            self.output.say(f"warning: {warning}")
        self.run_dir.event("dataset", **classes.to_dict(), warnings=classes.warnings)
        if self.trainer_config.eval_source is not None:
            self._pack_eval_source(self.trainer_config.eval_source)
        if self.options.val_fraction > 0:
            self._pack_validation(index)

    def _pack_eval_source(self, source: str) -> None:
        """A given --eval-source that is not packed yet is packed once, into run_dir/eval,
        at --eval-resolution (default: the packing config's max_res, the resolution the
        validation split is packed at); the trainers score it."""
        from deploy.eval_source import is_unpacked, pack_eval_source

        self.evaluated = f"images of {source}"
        if not is_unpacked(source):
            return
        config = self.options.packing_config()
        resolution = self.trainer_config.eval_resolution or config.max_res
        folder = self.run_dir.path / "eval"
        packed = pack_eval_source(source, folder, resolution, config.patch_size, config.seq_len)
        self.output.say(f"--eval-source {source}: {packed} images packed at {resolution} px")
        self.trainer_config = self.trainer_config.replace(eval_source=str(folder))

    def _pack_validation(self, index: Any) -> None:
        """The held-out split into run_dir/val, scored by the trainers (validation.py)."""
        o = self.options
        val = pack_validation(index, o, self.run_dir.path)
        self.output.say(
            f"validation: {val.held_out} images held out (--val-fraction {o.val_fraction}, "
            f"--val-seed {o.val_seed}), {val.packed} packed at {val.resolution} px "
            f"into {val.folder}"
        )
        self.run_dir.event("validation_packed", images=val.held_out, resolution=val.resolution)
        if val.packed == 0:
            self.output.say("validation: no readable held-out image; no validation scores")
        elif self.trainer_config.eval_source is None:  # a given --eval-source wins
            self.trainer_config = self.trainer_config.replace(eval_source=str(val.folder))

    # -- the service and the ranks -----------------------------------------------------

    def _start_service(self) -> bool:
        """Start `navit serve`; True once its ready file names it and /readyz answers."""
        self.output.say("starting the packer service (Ray, Flight, control plane) ...")
        stopping = lambda: self.stop_signal is not None  # noqa: E731
        self.service, start = start_service(self.options, self.run_dir, self.env, stopping)
        self.watch.control = start.control
        if start.ready is None:
            if start.problem:
                self.output.say("\n".join(start.problem))
            return False
        self._on_service_ready(start.ready)
        return True

    def _on_service_ready(self, ready: ReadyFile) -> None:
        # The trainers speak plain grpc:// (the service's location says grpc+tcp://).
        flight = "grpc://" + ready.flight.split("://", 1)[1]
        self.trainer_config = self.trainer_config.replace(source=flight)
        self.run_dir.event("service_ready", api=ready.api, flight=flight)
        self.output.say(f"control plane: {ready.api}  (dashboard; PATCH /config retunes packing)")
        self.output.say(f"packed batches: {flight}  (Arrow Flight)")

    def _stop_service(self) -> None:
        if self.service is None:
            return
        # SIGTERM to the service alone: it stops its streams and servers, then Ray; a
        # signal to its whole group would hit Ray's processes before the service is done.
        code = self.service.stop(grace_s=5.0 if self._force else 30.0, group=False)
        self.run_dir.event("service_stopped", code=code)
        self.service = None

    def _start_trainers(self, resume: bool) -> None:
        self.ranks.start(self.trainer_config, self.options.trainers, resume)
        how = "resuming from the checkpoint" if resume else "from step 0"
        model = self.trainer_config.model
        self.output.say(f"started {self.options.trainers} trainer rank(s) ({model} model, {how})")

    def _supervise(self) -> bool:
        """Until the trainers finish (False) or fail past the restart budget (True)."""
        while True:
            if self.stop_signal is not None:
                return False
            self.watch.update()
            if self.ranks.finished():
                return False
            failed = self.ranks.failed()
            refused = [child for child in failed if child.poll() == EXIT_USAGE]
            if refused:
                self._refused(refused[0])
                return True
            if failed:
                if not self._restart(failed):
                    return True
            elif self.service is not None and self.service.poll() is not None:
                self.output.say("\n".join(failure_lines(self.service)))
                return True
            time.sleep(POLL_INTERVAL_S)

    def _refused(self, child: Child) -> None:
        """A rank refused its flags or data: stop the job now with the rank's one line
        (restarting would fail the same way)."""
        self.usage_error = True
        self.run_dir.event("trainer_refused", name=child.name, pid=child.pid, code=EXIT_USAGE)
        line = next((x for x in reversed(child.tail(20).splitlines()) if x.strip()), "")
        self.output.say(f"{child.name} refused to start: {line.strip() or 'exit 2'}")
        self.output.say("stopping the job (a restart would fail the same way)")

    def _restart(self, failed: list[Child]) -> bool:
        """Restart every rank (DDP ranks cannot go on without one) from the checkpoint."""
        for child in failed:
            self.run_dir.event("trainer_exited", name=child.name, pid=child.pid, code=child.poll())
            tail = child.tail(8)
            self.output.say(f"{child.name} {child.exit_description()}" + (":" if tail else ""))
            if tail:
                self.output.say(tail, prefix="  | ")
        if self.restarts >= self.options.max_restarts:
            self.output.say(f"giving up after {self.restarts} restart(s) (--max-restarts)")
            return False
        self.restarts += 1
        # The other ranks wait on the dead one in DDP's all-reduce: stop them all.
        self.ranks.stop()
        resume = self.run_dir.has_checkpoint()
        step = self.run_dir.checkpoint_step() if resume else 0
        self.restart_steps.append(step)
        self.run_dir.event("restart", attempt=self.restarts, resume=resume, checkpoint_step=step)
        self.watch.metrics.reset()  # the new rank 0 rewrites metrics.jsonl up to `step`
        self.output.say(f"restart {self.restarts}/{self.options.max_restarts} from step {step}")
        self._start_trainers(resume=resume)
        return True

    # -- the end -----------------------------------------------------------------------

    def _finish(self, failed: bool) -> None:
        interrupted = self.stop_signal is not None
        self.ranks.stop(grace_s=3.0 if self._force else 10.0)
        watch = self.watch
        watch.metrics.read()
        self.output.show(watch.status())
        self.output.close()
        watch.sample_stats()
        if watch.last_stats is not None:
            self.run_dir.write_final_stats(watch.last_stats)
        self._stop_service()
        plot = None
        try:
            plot = write_plot(
                self.run_dir.path,
                watch.metrics.records,
                watch.samples,
                self.restart_steps,
                watch.metrics.evals,
            )
        except Exception as error:  # noqa: BLE001 - the plot must not hide the run's result
            self.output.say(f"could not draw the plot: {error}")
        state = "interrupted" if interrupted else "failed" if failed else "finished"
        self.run_dir.event("end", state=state, restarts=self.restarts)
        self.output.say("\n".join(self._summary(state, plot.name if plot else None)))

    def _summary(self, state: str, plot: str | None) -> list[str]:
        watch = self.watch
        summary = run_summary(
            state,
            watch.elapsed_s,
            watch.metrics.in_order(),
            self.trainer_config.steps,
            watch.last_stats,
            self.restart_steps,
            watch.metrics.evals_in_order(),
            self.evaluated,
        )
        outputs = [METRICS_NAME, "stats.json", CHECKPOINT_NAME, plot]
        present = [name for name in outputs if name and (self.run_dir.path / name).exists()]
        summary.append(f"in {self.run_dir.path}/: {', '.join(present)}")
        o = self.options
        if state == "finished" and o.val_fraction > 0 and self.run_dir.has_checkpoint():
            summary.append(
                "accuracy against cost at other resolutions: navit eval --ckpt "
                f"{self.run_dir.checkpoint} --source {o.dataset} "
                f"--val-fraction {o.val_fraction} --val-seed {o.val_seed}"
            )
        if state != "finished" and self.run_dir.has_checkpoint():
            summary.append("to continue from the checkpoint: the same command with --resume")
        return summary

    def _shutdown(self) -> None:
        """Whatever happened (an exception included), leave no child behind."""
        self.ranks.leave_none()
        if self.service is not None:
            self.service.stop(10.0, group=False)
            self.service = None
        self.output.close()
        self.watch.close()
        self.run_dir.close()
