"""The ready file: how `navit serve` tells the process that started it that it serves.

`navit serve DATASET --ready-file PATH` writes PATH once its Flight server and its HTTP
API both accept connections (never before), atomically, as one JSON object:

    {"api": "http://127.0.0.1:8000", "flight": "grpc+tcp://127.0.0.1:8815", "pid": 4242}

A supervisor (`navit pretrain`) removes PATH, starts the service, and waits until PATH
holds the pid of the child it started (so a file left by an earlier run never counts)
while that child is still alive; then it asks the API's /readyz. The service removes the
file again when it stops.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from packer.contract.files import write_bytes_atomically


@dataclass(frozen=True)
class ReadyFile:
    """Where a started service listens, and which process it is."""

    api: str  # base URL of the control plane
    flight: str  # Flight location, grpc+tcp:// or grpc+tls://
    pid: int

    def write(self, path: str | os.PathLike[str]) -> None:
        write_bytes_atomically(path, json.dumps(asdict(self)).encode() + b"\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ReadyFile | None:
        """The file's contents; None while it is absent or not a ready file."""
        try:
            values = json.loads(Path(path).read_bytes())
            return cls(api=str(values["api"]), flight=str(values["flight"]), pid=int(values["pid"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None
