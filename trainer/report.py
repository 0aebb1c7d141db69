"""A rank's step reports to the packer service it trains from, so the service's /stats
and dashboard show whether each rank waits for data (packer.contract.report).

    reporter = StepReporter("grpc://packer:8815", token, rank=1, world_size=2)
    reporter.report(record)    # a metrics.jsonl step record; sent at most once a second
    reporter.close()

Only a Flight source has a service to report to; a packed folder has none. A report that
cannot be sent is dropped (it is a gauge, not data): training never waits on it. A
service that does not take reports is not asked again.
"""

from __future__ import annotations

import time
from typing import Any

from packer.contract.report import REPORT_ACTION, StepReport

REPORT_INTERVAL_S = 1.0


def report_of(record: dict[str, Any], rank: int, world_size: int) -> StepReport:
    """The StepReport of a metrics.jsonl step record (trainer/metrics.py)."""
    step_s = float(record.get("step_s", 0.0))
    return StepReport(
        rank=rank,
        step=int(record["step"]),
        step_time_s=step_s,
        data_wait_s=min(float(record.get("data_wait_s", 0.0)), step_s),
        world_size=world_size,
        epoch=record.get("epoch"),
        batch=max(0, int(record.get("next_batch", 1)) - 1),
        samples_per_s=record.get("images_per_s"),
        tokens_per_s=record.get("tokens_per_s"),
        loss=record.get("loss"),
    )


class StepReporter:
    """Sends a rank's step reports to a Flight source (see the module doc)."""

    def __init__(
        self,
        source: str,
        token: str | None,
        rank: int,
        world_size: int,
        interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        from trainer.data import call_options, is_flight_source

        self.rank, self.world_size, self.interval_s = rank, world_size, interval_s
        self.enabled = is_flight_source(source)
        self._source = source
        # The bearer headers of every report (a packed folder has no service: none).
        self._options: Any = call_options(token) if self.enabled else None
        self._client: Any = None
        self._last = float("-inf")

    def report(self, record: dict[str, Any]) -> None:
        """Send the report of this step record, unless one left less than a second ago."""
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval_s:
            return
        self._last = now
        import pyarrow as pa
        from pyarrow import flight

        try:
            body = report_of(record, self.rank, self.world_size).to_bytes()
        except ValueError:
            return  # a NaN loss or the like: nothing worth showing
        try:
            if self._client is None:
                self._client = flight.FlightClient(self._source)
            action = flight.Action(REPORT_ACTION, body)
            list(self._client.do_action(action, self._options))
        except (flight.FlightServerError, pa.ArrowNotImplementedError) as error:
            if isinstance(error, pa.ArrowNotImplementedError) or "not supported" in str(error):
                self.enabled = False  # a server that takes no reports: stop asking
        except (flight.FlightError, pa.ArrowException, OSError):
            pass  # unreachable for now: the next report may get through

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
