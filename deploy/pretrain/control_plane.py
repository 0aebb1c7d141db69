"""The supervisor's HTTP client of the service's control plane: readiness and /stats.
(The trainer ranks report their steps to the service themselves, trainer/report.py.)

Nothing here stops the job: a failed request is a missed sample, not an error.
"""

from __future__ import annotations

from typing import Any

import httpx

from packer.contract.auth import bearer_headers, read_token


class ControlPlane:
    def __init__(self, api_url: str, timeout_s: float = 5.0) -> None:
        self.api_url = api_url
        # The service reads its token from NAVIT_TOKEN too (the supervisor passes none).
        headers = bearer_headers(read_token())
        self._http = httpx.Client(base_url=api_url, timeout=timeout_s, headers=headers)

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

    def close(self) -> None:
        self._http.close()
