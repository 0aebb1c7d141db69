"""A trainer rank's step report: how long its steps take and how long it waits for data.

Each rank sends it to the packer service it trains from, over the same Flight connection
and token as its batches: `do_action` of type `navit.report` whose body is the report's
JSON, e.g.

    {"rank": 1, "world_size": 2, "step": 120, "step_time_s": 0.21, "data_wait_s": 0.01,
     "epoch": 3, "batch": 7, "samples_per_s": 310.5, "tokens_per_s": 11200.0, "loss": 1.2}

The service shows the latest of each rank on /stats and the dashboard (data-wait share,
starved or not). The HTTP control plane takes the same fields at
POST /trainers/{rank}/report.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

REPORT_ACTION = "navit.report"
_MAX_REPORT_BYTES = 4096
_MAX_INT = 2**63 - 1


@dataclass(frozen=True)
class StepReport:
    """One rank's latest step (see the module doc); numbers finite and non-negative."""

    rank: int
    step: int
    step_time_s: float
    data_wait_s: float
    world_size: int | None = None
    epoch: int | None = None
    batch: int | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    loss: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in ("rank", "step", "step_time_s", "data_wait_s"):
                continue
            integer = f.name in ("rank", "step", "world_size", "epoch", "batch")
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"{f.name}: must be {'an integer' if integer else 'a number'}")
            if not math.isfinite(value) or (value < 0 and f.name != "loss") or value > _MAX_INT:
                raise ValueError(f"{f.name}: must be a finite number >= 0, got {value!r}")
        if self.world_size is not None and not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: must lie in [0, world_size={self.world_size})")

    def to_bytes(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> StepReport:
        """Parse an action body; a ValueError names what is wrong."""
        if len(raw) > _MAX_REPORT_BYTES:
            raise ValueError(f"report: {len(raw)} bytes, more than {_MAX_REPORT_BYTES}")
        try:
            values = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise ValueError(f"report: not JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError("report: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{unknown[0][:40]}: unknown report field (known: {', '.join(sorted(known))})"
            )
        missing = [
            name for name in ("rank", "step", "step_time_s", "data_wait_s") if name not in values
        ]
        if missing:
            raise ValueError(f"{missing[0]}: missing")
        return cls(**values)

    def fields_for_the_service(self) -> dict[str, object]:
        """Everything but the rank, as the service's trainer reports keep them."""
        return {k: v for k, v in asdict(self).items() if k != "rank"}
