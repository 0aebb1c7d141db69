"""The reject ledger: images whose header read but whose pixels did not decode, remembered
with the index so later plans leave them out.

The planner sees only headers, so an image that fails at decode (a truncated JPEG, a
PNG whose header claims more than its data holds) is planned, then dropped by the fill:
its sequence ships shorter and the pack differs from what `navit simulate` predicted.
The fill's rejects are recorded here, beside the index cache, keyed by the index's
fingerprint (files changed: a new index, an empty ledger), and applied to the index as
header-style rejects (marked rows, packer.index.image_index), so the planner never
places them again.

The rule, which keeps every batch a pure function of its inputs:

- An entry found while epochs up to E are planned takes effect from epoch E + 1, the
  first epoch not yet planned (`effective_epoch`): a batch already planned never
  changes, and a restarted job that reloads the ledger regenerates epochs 0..E
  byte-identically.
- Entries recorded before a job started (`job_start`, the ledger's length then) apply
  to all of that job's epochs: a new `navit pack` leaves out every image an earlier run
  found broken, from its first epoch.
- `navit simulate` applies every known entry, so after a pack that found decode
  failures it predicts the next pack exactly.

Example: run 1 packs epochs 0-1 and finds a.jpg broken in epoch 0 (entry 0, effective
from epoch 1): epoch 0 has a.jpg planned and rejected at fill, epoch 1 leaves it out.
Run 2 starts with job_start = 1 and leaves a.jpg out of every epoch, as simulate says.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from packer.contract.files import write_bytes_atomically
from packer.image.reject import REJECT_REASONS, Reject
from packer.index.image_index import ImageIndex
from packer.index.table import index_cache_path

_FINGERPRINT_KEY = b"navit.fingerprint"


@dataclass(frozen=True)
class LedgerEntry:
    """One image the fill rejected, and the first epoch whose plan leaves it out."""

    image_id: str
    reason: str
    detail: str
    effective_epoch: int


class RejectLedger:
    """Fill-time rejects of one index, in the order found; persisted when it has a path.

    `RejectLedger.for_index(index)` opens the one beside the index cache of
    `packer.index.load_index`; `RejectLedger()` is an in-memory one (an index built
    without the cache, a test).
    """

    def __init__(self, path: Path | None = None, fingerprint: str = "") -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.entries: list[LedgerEntry] = []
        if path is not None:
            self.entries = self._read()

    @classmethod
    def for_index(cls, index: ImageIndex) -> RejectLedger:
        """The ledger of an index from load_index, <hash>.rejects.json beside its cache
        file; an in-memory one for an index built without the cache."""
        cached = index_cache_path(index)
        fingerprint = (index.schema.metadata or {}).get(_FINGERPRINT_KEY)
        if cached is None or not fingerprint:
            return cls()
        return cls(cached.with_suffix(".rejects.json"), fingerprint.decode())

    @classmethod
    def load(cls, path: str | Path, fingerprint: str) -> RejectLedger:
        """The ledger at `path` if it belongs to `fingerprint`, else an empty one there."""
        return cls(Path(path), fingerprint)

    def __len__(self) -> int:
        return len(self.entries)

    def record(self, rejects: Iterable[Reject], effective_epoch: int) -> int:
        """Add (image_id, reason, detail) rejects not yet known, effective from
        `effective_epoch` (the first epoch not yet planned); returns how many were new.

        Re-reads the file first, so entries another process recorded are kept, and
        writes it atomically.
        """
        if effective_epoch < 0:
            raise ValueError(f"effective_epoch must be >= 0, got {effective_epoch}")
        rejects = list(rejects)
        if not rejects:
            return 0  # nothing to add: no file read or written (callers run per batch)
        if self.path is not None:
            self.entries = self._read()
        known = {entry.image_id for entry in self.entries}
        added = 0
        for image_id, reason, detail in rejects:
            if image_id in known:
                continue
            if reason not in REJECT_REASONS:
                raise ValueError(f"unknown reject reason {reason!r} for {image_id}")
            self.entries.append(LedgerEntry(image_id, reason, detail, effective_epoch))
            known.add(image_id)
            added += 1
        if added and self.path is not None:
            payload = {
                "fingerprint": self.fingerprint,
                "entries": [asdict(e) for e in self.entries],
            }
            write_bytes_atomically(self.path, json.dumps(payload, indent=1).encode())
        return added

    def active(self, epoch: int, job_start: int = 0) -> list[LedgerEntry]:
        """The entries that apply to `epoch` of a job that started when the ledger held
        `job_start` entries: those recorded before the job, and the job's own whose
        effective_epoch <= epoch."""
        return [
            entry
            for position, entry in enumerate(self.entries)
            if position < job_start or entry.effective_epoch <= epoch
        ]

    def apply(self, index: ImageIndex, epoch: int, job_start: int = 0) -> ImageIndex:
        """`index` with every active entry's image marked rejected (as a header reject:
        packer.index.image_index), for planning `epoch`. The same index when none apply."""
        active = self.active(epoch, job_start)
        if not active:
            return index
        rows = index.rows_of([entry.image_id for entry in active])
        marks = {
            row: (entry.reason, entry.detail)
            for entry in active
            for row in rows.get(entry.image_id, ())
        }
        return index.marked(marks)

    def _read(self) -> list[LedgerEntry]:
        try:
            payload = json.loads(self.path.read_bytes())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return []  # absent or unreadable: start empty (rejects are found again)
        if not isinstance(payload, dict) or payload.get("fingerprint") != self.fingerprint:
            return []  # another index's (files changed since): not ours
        try:
            return [LedgerEntry(**entry) for entry in payload.get("entries", [])]
        except TypeError:
            return []
