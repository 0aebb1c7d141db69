"""The trainer ranks as the supervisor's children: `navit train` once per rank, DDP
between them over a fresh rendezvous port each start, the machine's cores shared.
"""

from __future__ import annotations

import os
import signal

from deploy.cli.options import dataclass_argv
from deploy.pretrain.processes import Child, free_port, session_members
from deploy.pretrain.run_dir import RunDir
from deploy.pretrain.service_child import navit
from trainer.config import TrainConfig


class TrainerRanks:
    """The ranks of one start; `start` again after `stop` for a restart."""

    def __init__(self, run_dir: RunDir, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.children: list[Child] = []

    def start(self, config: TrainConfig, world_size: int, resume: bool) -> None:
        """One `navit train` per rank of `config` (rank and resume set per child)."""
        master_port = str(free_port())  # a new one per start: the old may linger in TIME_WAIT
        cores = os.cpu_count() or 1
        self.children = []
        for rank in range(world_size):
            argv = navit("train", *dataclass_argv(config.replace(rank=rank, resume=resume)))
            env = {
                **self.env,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": master_port,
                "LOCAL_RANK": str(rank),  # one GPU per rank where there are GPUs
            }
            # N ranks on one machine: each gets its share of the cores, not all of them.
            env.setdefault("OMP_NUM_THREADS", str(max(1, cores // world_size)))
            log = self.run_dir.log(f"trainer-{rank}")
            self.children.append(Child(f"trainer-{rank}", argv, env, log))
        self.run_dir.event(
            "trainers_started",
            resume=resume,
            pids=[child.pid for child in self.children],
            argv=self.children[0].argv,
        )

    def exit_codes(self) -> list[int | None]:
        return [child.poll() for child in self.children]

    def failed(self) -> list[Child]:
        """The ranks that ended with an error (an exit code other than 0)."""
        return [child for child in self.children if child.poll() not in (None, 0)]

    def finished(self) -> bool:
        return bool(self.children) and all(code == 0 for code in self.exit_codes())

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every rank at once (they wait on each other in DDP), then each in turn."""
        for child in self.children:
            child.signal(signal.SIGTERM)
        for child in self.children:
            child.stop(grace_s)

    def kill(self) -> None:
        for child in self.children:
            child.signal(signal.SIGKILL)

    def leave_none(self) -> None:
        """Stop whatever is left of every rank, its session's processes included."""
        for child in self.children:
            if child.poll() is None or session_members(child.pid):
                child.stop(3.0)
