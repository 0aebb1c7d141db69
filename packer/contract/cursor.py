"""Where a trainer rank's stream stands, and how it is asked for on the wire.

A job of `world_size` ranks splits each epoch's global batches round-robin: rank r's
k-th batch is global batch `k * world_size + r`, and the epoch's short last round is
shared out among all ranks (packer.contract.rank_layout), so every rank gets the same
number of batches. A `Cursor` (rank, world_size, epoch, next_batch) is therefore
everything needed to resume: the trainer stores it in its checkpoint, sends it as the Flight `do_get` ticket
`{"rank": 0, "world_size": 2, "epoch": 0, "start_batch": 0}`, and the service records it
as the rank's position. Every batch sent carries `BatchMetadata` as Flight app_metadata;
after training batch k the cursor is `cursor.after(metadata)` = (epoch, k + 1).

This module needs only the standard library: a GPU trainer box imports it without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from packer.contract.rank_layout import global_batch_index

# Far beyond any real run, and small enough for SQLite integers and numpy seeds.
MAX_WORLD_SIZE = 65536
MAX_EPOCH = 1_000_000
MAX_BATCH = 2**40

# The ticket's JSON keys: `start_batch` is the cursor's `next_batch` on the wire.
TICKET_FIELDS = ("rank", "world_size", "epoch", "start_batch")
_EXAMPLE_TICKET = '{"rank": 0, "world_size": 2, "epoch": 0, "start_batch": 0}'
# A ticket is four small integers; anything much longer is not one (and must not be parsed).
_MAX_TICKET_BYTES = 1024


class TicketError(ValueError):
    """A cursor or ticket is malformed; `field` names the offending ticket field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Cursor:
    """Rank `rank` of `world_size` at epoch `epoch`, next to receive its batch `next_batch`."""

    rank: int
    world_size: int
    epoch: int = 0
    next_batch: int = 0

    def __post_init__(self) -> None:
        for name, wire in (
            ("rank", "rank"),
            ("world_size", "world_size"),
            ("epoch", "epoch"),
            ("next_batch", "start_batch"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TicketError(wire, f"must be an integer, got {value!r}")
            if value < 0:
                raise TicketError(wire, f"must be non-negative, got {value}")
        if not 1 <= self.world_size <= MAX_WORLD_SIZE:
            raise TicketError(
                "world_size", f"must lie in [1, {MAX_WORLD_SIZE}], got {self.world_size}"
            )
        if self.rank >= self.world_size:
            raise TicketError(
                "rank", f"must be below world_size={self.world_size}, got {self.rank}"
            )
        if self.epoch > MAX_EPOCH:
            raise TicketError("epoch", f"must be at most {MAX_EPOCH}, got {self.epoch}")
        if self.next_batch > MAX_BATCH:
            raise TicketError("start_batch", f"must be at most {MAX_BATCH}, got {self.next_batch}")

    @property
    def global_batch(self) -> int:
        """The global batch index of `next_batch` in this epoch."""
        return global_batch_index(self.rank, self.world_size, self.next_batch)

    def advanced(self) -> Cursor:
        """The cursor after one more batch of this epoch."""
        return Cursor(self.rank, self.world_size, self.epoch, self.next_batch + 1)

    def next_epoch(self) -> Cursor:
        """The start of the following epoch."""
        return Cursor(self.rank, self.world_size, self.epoch + 1, 0)

    def after(self, metadata: BatchMetadata) -> Cursor:
        """The cursor once the batch described by `metadata` has been consumed."""
        return Cursor(self.rank, self.world_size, metadata.epoch, metadata.batch + 1)

    # -- the Flight ticket ------------------------------------------------------------

    def to_ticket(self) -> bytes:
        """The do_get ticket, e.g. b'{"rank": 0, "world_size": 2, "epoch": 0, ...}'."""
        values = (self.rank, self.world_size, self.epoch, self.next_batch)
        return json.dumps(dict(zip(TICKET_FIELDS, values, strict=True))).encode()

    @classmethod
    def from_ticket(cls, raw: bytes) -> Cursor:
        """Parse a do_get ticket; every failure is a TicketError naming the field."""
        if len(raw) > _MAX_TICKET_BYTES:
            raise TicketError(
                "ticket",
                f"is {len(raw)} bytes; expected a small JSON object like {_EXAMPLE_TICKET}",
            )
        try:
            values = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            # ValueError covers bad JSON and integers too long to convert.
            raise TicketError(
                "ticket", f"expected UTF-8 JSON like {_EXAMPLE_TICKET}, got {raw[:80]!r} ({e})"
            ) from None
        if not isinstance(values, dict):
            raise TicketError("ticket", f"expected a JSON object, got {type(values).__name__}")
        for key in values:
            if key not in TICKET_FIELDS:
                raise TicketError(
                    key[:80], f"unknown ticket field (known: {', '.join(TICKET_FIELDS)})"
                )
        for key in ("rank", "world_size", "epoch"):
            if key not in values:
                raise TicketError(key, "missing")
        return cls(
            values["rank"], values["world_size"], values["epoch"], values.get("start_batch", 0)
        )

    # -- what a checkpoint stores -----------------------------------------------------

    def to_dict(self) -> dict[str, int]:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Cursor:
        return cls(values["rank"], values["world_size"], values["epoch"], values["next_batch"])


@dataclass(frozen=True)
class BatchMetadata:
    """What travels with each batch (Flight app_metadata): which batch it is, made how."""

    epoch: int
    batch: int  # this rank's batch index k within the epoch
    global_batch: int
    rank: int
    config_version: int

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "epoch": self.epoch,
                "batch": self.batch,
                "global_batch": self.global_batch,
                "rank": self.rank,
                "config_version": self.config_version,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> BatchMetadata:
        """Parse app_metadata; a ValueError says what is missing or malformed."""
        try:
            values = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"batch metadata is not JSON: {raw[:80]!r} ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"batch metadata must be a JSON object, got {raw[:80]!r}")
        try:
            return cls(**{key: int(values[key]) for key in cls.__dataclass_fields__})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"batch metadata {raw[:80]!r} lacks or mangles {e}") from None
