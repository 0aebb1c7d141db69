"""The supervisor's HTTP client of the service's control plane: readiness, /stats, and
rank 0's step reports (the dashboard shows from them whether the trainers wait for data).

Nothing here stops the job: a failed request is a missed sample, not an error.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import httpx

from packer.contract.auth import bearer_headers, read_token


class ControlPlane:
    def __init__(self, api_url: str, timeout_s: float = 5.0) -> None:
        self.api_url = api_url
        # The service reads its token from NAVIT_TOKEN too (the supervisor passes none).
        headers = bearer_headers(read_token())
        self._http = httpx.Client(base_url=api_url, timeout=timeout_s, headers=headers)
        self._reported_step = -1

    def ready(self) -> bool:
        """GET /readyz answers 200: the index is loaded and the job streams."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict[str, Any] | None:
        """GET /stats, or None when it fails."""
        try:
            response = self._http.get("/stats")
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError):
            return None

    def report_trainer(self, latest: dict[str, Any], world_size: int) -> None:
        """POST rank 0's latest metrics record (once per step) to /trainers/0/report."""
        if latest["step"] == self._reported_step:
            return
        self._reported_step = latest["step"]
        report = {
            "step": latest["step"],
            "step_time_s": latest.get("step_s", 0.0),
            "data_wait_s": min(latest.get("data_wait_s", 0.0), latest.get("step_s", 0.0)),
            "world_size": world_size,
            "epoch": latest.get("epoch"),
            "batch": max(0, latest.get("next_batch", 1) - 1),
            "samples_per_s": latest.get("images_per_s"),
            "tokens_per_s": latest.get("tokens_per_s"),
            "loss": latest.get("loss"),
        }
        if not all(math.isfinite(v) for v in report.values() if isinstance(v, float)):
            return
        with contextlib.suppress(httpx.HTTPError):
            self._http.post("/trainers/0/report", json=report)

    def close(self) -> None:
        self._http.close()
