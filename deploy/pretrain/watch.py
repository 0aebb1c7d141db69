"""What the supervisor follows while the job runs: rank 0's metrics, the service's /stats
once a second, and the progress line.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from deploy.pretrain.control_plane import ControlPlane
from deploy.pretrain.progress import (
    RECENT_STEPS,
    MetricsTail,
    ProgressLine,
    run_status,
    stats_sample,
)
from deploy.pretrain.run_dir import RunDir

STATS_INTERVAL_S = 1.0


class RunWatch:
    """The job's metrics and /stats samples as they come, and the line that shows them."""

    def __init__(self, run_dir: RunDir, output: ProgressLine) -> None:
        self.run_dir = run_dir
        self.output = output
        self.control: ControlPlane | None = None  # set once the service is up
        self.metrics = MetricsTail(run_dir.metrics)
        self.samples: list[dict[str, Any]] = []  # /stats over the run
        self.last_stats: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._last_sample = 0.0

    def update(self) -> None:
        """Read new metrics; sample /stats once a second; show the line."""
        self.metrics.read()
        now = time.monotonic()
        if now - self._last_sample >= STATS_INTERVAL_S:
            self._last_sample = now
            self.sample_stats()
        self.output.show(self.status())

    def status(self) -> dict[str, Any]:
        """`run_status` of the metrics so far, given only what it reads: the last
        RECENT_STEPS step records in step order and the latest validation record (no sort
        or list of every record on each poll)."""
        records, evals = self.metrics.records, self.metrics.evals
        recent = [records[step] for step in sorted(heapq.nlargest(RECENT_STEPS, records))]
        latest_eval = [evals[max(evals)]] if evals else []
        return run_status(recent, self.last_stats, latest_eval)

    def sample_stats(self) -> None:
        """One /stats sample (kept, and a line of stats.jsonl); none while it fails."""
        stats = self.control.stats() if self.control is not None else None
        if stats is None:
            return
        self.last_stats = stats
        latest = self.metrics.latest
        elapsed = time.monotonic() - self._started
        sample = stats_sample(stats, latest["step"] if latest else 0, elapsed)
        self.samples.append(sample)
        self.run_dir.stats_sample(sample)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
