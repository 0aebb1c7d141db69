"""The bearer token that guards the service: where it is read from and how it is sent.

One token guards both transports. A client sends the header
`authorization: Bearer <token>` on every Flight call and on every HTTP mutation; the
token comes from the environment variable `NAVIT_TOKEN` or the first line of a file.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

TOKEN_ENV = "NAVIT_TOKEN"
AUTH_HEADER = "authorization"


def read_token(token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token from `token_file` (first line) if given, else from $NAVIT_TOKEN, else None.

    A named file that is missing or empty is an error rather than "no token": a job that
    meant to be guarded must not start open.
    """
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text()
        except OSError as e:
            raise ValueError(f"token file {path}: {e.strerror or e}") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"token file {path} is empty")
        return lines[0]
    return os.environ.get(TOKEN_ENV) or None


def bearer_value(token: str) -> str:
    """The header value for `token`: 'Bearer <token>'."""
    return f"Bearer {token}"


def bearer_headers(token: str | None) -> dict[str, str]:
    """The header to send, as a dict ({} when there is no token)."""
    return {AUTH_HEADER: bearer_value(token)} if token else {}


def bearer_matches(header_value: str | bytes | None, token: str) -> bool:
    """Whether an `authorization` header value carries `token` (constant-time compare)."""
    if header_value is None:
        return False
    raw = header_value if isinstance(header_value, bytes) else header_value.encode()
    return hmac.compare_digest(raw, bearer_value(token).encode())
