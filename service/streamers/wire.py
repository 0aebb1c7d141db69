"""What a coordinator and its streamers say to each other: Flight actions on the
coordinator's server, with JSON bodies.

Every call carries the service token like any other Flight call, and its body carries
the job's streamer key (a random secret the coordinator hands its streamers when it
starts them), so a trainer, which holds the token, cannot pose as a streamer:

    navit.streamer.index     {"key", "streamer"}
        -> the job's index (held-out images left out), Arrow IPC stream bytes, in
           results of at most INDEX_CHUNK_BYTES
    navit.streamer.register  {"key", "streamer", "location", "node", "pid"}
                          or {"key", "streamer", "error"}           (it cannot serve)
        -> {"restarts": 2}
    navit.streamer.reserve   {"key", "streamer", "epoch", "window"}
        -> a Reservation (service.job.planning): {"epoch", "next_window",
           "furthest_epoch", "history": [ConfigVersion dicts], "left_out": [[id, reason,
           detail], ...] (window 0 only; [] for later windows)}
    navit.streamer.events    {"key", "streamer", "events": [event, ...]}
        -> {"config_version", "furthest_epoch", "errors": {"<position>": [field, message]}}

The events are what the streamer's rank streams did (service.job.streams.StreamEvents),
in order, each a JSON object with a "kind": opened, header_rejected, delivered,
advanced, closed, rejects (decode failures for the reject ledger), report (a trainer's
step report that reached the streamer) and check_epoch (may this epoch be opened? the
only kind that can fail: its position in the batch then maps to a TicketError's field
and message).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from packer.image.reject import Reject
from packer.plan.history import ConfigHistory, ConfigVersion
from service.job.planning import Reservation

INDEX = "navit.streamer.index"
REGISTER = "navit.streamer.register"
RESERVE = "navit.streamer.reserve"
EVENTS = "navit.streamer.events"

# The index travels in pieces: gRPC messages stay small whatever the data set's size.
INDEX_CHUNK_BYTES = 1 << 20


class WireError(ValueError):
    """A body that is not what the action takes (the message says what is wrong)."""


def encode(values: dict[str, Any]) -> bytes:
    return json.dumps(values, separators=(",", ":")).encode()


def decode(raw: bytes, key: str) -> dict[str, Any]:
    """The JSON object of an action body whose "key" is `key` (WireError otherwise)."""
    try:
        values = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise WireError(f"not JSON ({error})") from None
    if not isinstance(values, dict):
        raise WireError("expected a JSON object")
    given = values.get("key")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), key.encode()):
        raise WireError("wrong or missing streamer key: only the job's streamers call this")
    return values


def integer(values: dict[str, Any], name: str, low: int = 0) -> int:
    value = values.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise WireError(f"{name}: expected an integer >= {low}, got {value!r}")
    return value


# -- the reservation ---------------------------------------------------------------------


def reservation_to_dict(reservation: Reservation) -> dict[str, Any]:
    return {
        "epoch": reservation.epoch,
        "next_window": reservation.next_window,
        "furthest_epoch": reservation.furthest_epoch,
        "history": [entry.to_dict() for entry in reservation.history.entries],
        "left_out": [list(reject) for reject in reservation.left_out],
    }


def reservation_from_dict(values: dict[str, Any]) -> Reservation:
    try:
        history = ConfigHistory([ConfigVersion.from_dict(d) for d in values["history"]])
        return Reservation(
            epoch=int(values["epoch"]),
            next_window=int(values["next_window"]),
            furthest_epoch=int(values["furthest_epoch"]),
            history=history,
            left_out=[Reject(*map(str, r)) for r in values["left_out"]],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise WireError(f"malformed reservation: {error}") from None
