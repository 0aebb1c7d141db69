"""What each trainer rank last said about its step and its wait for data.

A rank POSTs a report after its steps (POST /trainers/{rank}/report); /stats and the
dashboard show the latest of each rank with its data-wait fraction, and call a rank
that waits more than a fifth of its step for data starved.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# A trainer that spends more than a fifth of its step waiting for data is data-starved.
STARVED_WAIT_FRACTION = 0.2


class TrainerReports:
    """The latest report of each trainer rank, with its data-wait fraction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[int, dict[str, Any]] = {}

    def add(self, rank: int, report: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        step_time = report.get("step_time_s") or 0.0
        wait = report.get("data_wait_s") or 0.0
        fraction = min(wait / step_time, 1.0) if step_time > 0 else 0.0
        entry = {
            **report,
            "rank": rank,
            "data_wait_fraction": round(fraction, 4),
            "starved": fraction > STARVED_WAIT_FRACTION,
            "received_at": time.time() if now is None else now,
        }
        with self._lock:
            self._latest[rank] = entry
        return entry

    def entries(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each rank's latest report by rank, with its age in seconds."""
        now = time.time() if now is None else now
        with self._lock:
            entries = [dict(e) for _, e in sorted(self._latest.items())]
        for e in entries:
            e["age_s"] = round(now - e.pop("received_at"), 3)
        return entries
