"""Why an image is not packed: the reasons, the exception that carries one, and the record.

Every failure to read or decode an image becomes a `RejectedImage` with a short reason
code (never a crash of the job), and what the job reports and remembers of it is a
`Reject`: (image_id, reason, detail), e.g.

    Reject("cats/003.jpg", "truncated", "image file is truncated (3 bytes not processed)")

The header scan (packer.index), the reject ledger and the fill (packer.fill) all speak it.
"""

from __future__ import annotations

from typing import NamedTuple

REJECT_REASONS = (
    "empty",
    "not_an_image",
    "truncated",
    "decompression_bomb",
    "bad_dimensions",
    "decode_error",
    "read_error",
)


class RejectedImage(Exception):
    """An image the packer cannot use: `reason` is a code from REJECT_REASONS.

    str(e) is "reason: detail", e.g. "truncated: image file is truncated (3 bytes not
    processed)". Picklable (args are (reason, detail)), so it crosses process boundaries.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {REJECT_REASONS}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Reject(NamedTuple):
    """One image left out, with its reason code (one of REJECT_REASONS) and message."""

    image_id: str
    reason: str
    detail: str
