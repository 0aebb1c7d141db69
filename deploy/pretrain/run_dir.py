"""The run directory of one `navit pretrain` job: what a fresh run clears, the events
log, the /stats samples and the checkpoint's step.

    runs/pretrain/
      checkpoint.pt, metrics.jsonl   rank 0's (trainer/config.py names them)
      stats.json, stats.jsonl        the service's /stats: at the end, and over the run
      events.jsonl                   what the supervisor did, with process ids
      pretrain.png                   the plot
      service-ready.json             the service's ready file while it serves
      state/ logs/ val/ eval/        the service's state, the children's logs, the
                                     held-out split and an unpacked --eval-source,
                                     each packed once
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, TextIO

from deploy.pretrain.validation import VAL_DIR
from packer.contract.files import leftover_temporaries
from trainer.config import CHECKPOINT_NAME, METRICS_NAME

READY_FILE = "service-ready.json"

# Files and folders of a previous run that a fresh run replaces (never anything else).
RUN_FILES = (
    CHECKPOINT_NAME,
    METRICS_NAME,
    "stats.json",
    "stats.jsonl",
    "events.jsonl",
    "pretrain.png",
    READY_FILE,
)
RUN_DIRS = ("state", "logs", VAL_DIR, "eval")


class RunDir:
    """One run's folder; `open()` starts its logs, `close()` ends them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._events: TextIO | None = None
        self._stats: TextIO | None = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def ready_file(self) -> Path:
        return self.path / READY_FILE

    def log(self, name: str) -> Path:
        """logs/NAME.log: a child's output."""
        return self.path / "logs" / f"{name}.log"

    def clear_previous_run(self) -> None:
        """Remove what an earlier run left (its output would mix with this run's, and its
        config history in state/ would replace this run's --set values), temporaries of
        a checkpoint write that was killed included."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for leftover in leftover_temporaries(self.checkpoint):
            leftover.unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def open(self) -> None:
        (self.path / "logs").mkdir(parents=True, exist_ok=True)
        self._events = open(self.path / "events.jsonl", "a")  # noqa: SIM115 - close()
        self._stats = open(self.path / "stats.jsonl", "a")  # noqa: SIM115

    def close(self) -> None:
        for handle in (self._events, self._stats):
            if handle is not None:
                handle.close()
        self._events = self._stats = None

    def event(self, kind: str, **values: Any) -> None:
        """A line of events.jsonl: what the supervisor did, with process ids."""
        if self._events is None:
            return
        record = {"t": round(time.time(), 3), "event": kind, **values}
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def stats_sample(self, sample: dict[str, Any]) -> None:
        """A line of stats.jsonl: one /stats sample of the run."""
        if self._stats is None:
            return
        self._stats.write(json.dumps(sample) + "\n")
        self._stats.flush()

    def write_final_stats(self, stats: dict[str, Any]) -> None:
        (self.path / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def checkpoint_step(self) -> int:
        """The step of the checkpoint (loads it: torch only here)."""
        import torch

        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        return int(state["step"])
