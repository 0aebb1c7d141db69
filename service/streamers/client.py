"""`CoordinatorClient`: a streamer's calls to its coordinator (service.streamers.wire).

One Flight client to the coordinator's server, with the service token and, over TLS,
the service's certificate as the root it trusts (the coordinator and its streamers
share one certificate, which must name every host they listen on). A call that does
not answer within `timeout_s` is a FlightTimedOutError: the caller decides whether to
try again (the event reporter does; a reservation is retried by the next stream).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from packer.contract.auth import bearer_headers
from packer.index.image_index import ImageIndex
from service.job.planning import Reservation
from service.streamers import wire


class CoordinatorClient:
    """Calls the coordinator at `location` as streamer `streamer` of the job of `key`."""

    def __init__(
        self,
        location: str,
        *,
        key: str,
        streamer: int,
        token: str | None = None,
        tls_root: bytes | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.location = location
        self._key = key
        self.streamer = streamer
        options: dict[str, Any] = {}
        if tls_root is not None:
            options["tls_root_certs"] = tls_root
        self._client = flight.FlightClient(location, **options)
        headers = [(k.encode(), v.encode()) for k, v in bearer_headers(token).items()]
        self._options = flight.FlightCallOptions(headers=headers, timeout=timeout_s)

    def _call(self, action: str, values: dict[str, Any]) -> list[bytes]:
        body = wire.encode({"key": self._key, "streamer": self.streamer, **values})
        results = self._client.do_action(flight.Action(action, body), self._options)
        return [result.body.to_pybytes() for result in results]

    def _json(self, action: str, values: dict[str, Any]) -> dict[str, Any]:
        (answer,) = self._call(action, values)
        return json.loads(answer)

    def index(self) -> ImageIndex:
        """The job's index, as the coordinator plans it (held-out images left out)."""
        data = b"".join(self._call(wire.INDEX, {}))
        return ImageIndex.from_table(pa.ipc.open_stream(pa.py_buffer(data)).read_all())

    def register(self, location: str, node: str, pid: int) -> int:
        """Say where this streamer listens; returns how often it has restarted."""
        values = {"location": location, "node": node, "pid": pid}
        return int(self._json(wire.REGISTER, values)["restarts"])

    def register_failure(self, error: str) -> None:
        """Say that this streamer cannot serve, and why (one line)."""
        self._json(wire.REGISTER, {"error": error})

    def reserve(self, epoch: int, window: int) -> Reservation:
        """Reserve window `window` of `epoch` (EpochPlanners.reserve)."""
        answer = self._json(wire.RESERVE, {"epoch": epoch, "window": window})
        return wire.reservation_from_dict(answer)

    def send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Send events in order; the answer holds the config version, the furthest
        epoch and the errors of check_epoch events by position."""
        return self._json(wire.EVENTS, {"events": events})

    def close(self) -> None:
        self._client.close()
