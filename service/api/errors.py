"""How the control plane answers a refused request: JSON that says why, never an echo.

FastAPI's own 422 handler returns each validation error with its `input`: the whole
offending value, however large (a 2 MB string comes back as 2 MB), and a NaN or Infinity
input cannot be rendered as JSON at all, so the 422 became a 500 with a traceback. Here
every error keeps its location, message and type, and its input only as a short preview.

A body that is not JSON at all is FastAPI's "json_invalid" error, whose input is `{}`:
here its input is the start of the bytes received instead (`BODY_PREVIEW_CHARS`, as
UTF-8 with undecodable bytes and control characters escaped) and its message says where parsing stopped, so a client
that sent `max_images_per_seq=4` (a form, not JSON) sees what arrived:

    {"loc": ["body", 0], "msg": "body is not JSON: Expecting value at character 0",
     "type": "json_invalid", "input": "max_images_per_seq=4"}
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.api.deps import ApiError

# Longest preview of an input (and of a location part or message) in a 422.
PREVIEW_CHARS = 100
_MESSAGE_CHARS = 300
# Characters of a body that is not JSON shown back in its 422.
BODY_PREVIEW_CHARS = 80


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """A JSON-safe, bounded stand-in for an input: small numbers, booleans and None as
    they are, a string cut to `limit` characters, anything else (NaN, lists, objects)
    as its repr cut the same way. preview("x" * 10**6) is 100 x's followed by '...'."""
    if value is None or isinstance(value, bool | int) and abs(value) < 2**53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def body_start(body: Any, limit: int = BODY_PREVIEW_CHARS) -> str:
    """The first `limit` characters of a request body, each non-printable one escaped
    as Python writes it (a newline as the two characters backslash and n, a NUL as
    backslash x00); a longer body ends in '...'."""
    if isinstance(body, bytes | bytearray):
        body = bytes(body).decode("utf-8", "backslashreplace")
    text = body if isinstance(body, str) else repr(body)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _location(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, int) else str(preview(str(part))) for part in loc]


async def validation_error_422(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with each error's location (naming the field), message, type and an input
    preview; see the module docstring."""
    detail = []
    for e in error.errors():
        entry: dict[str, Any] = {
            "loc": _location(tuple(e.get("loc", ()))),
            "msg": str(preview(str(e.get("msg", "")), _MESSAGE_CHARS)),
            "type": str(e.get("type", "invalid")),
        }
        if "input" in e:
            entry["input"] = preview(e["input"])
        if entry["type"] == "json_invalid":  # see the module docstring
            reason = str(preview(str((e.get("ctx") or {}).get("error", "")), _MESSAGE_CHARS))
            position = entry["loc"][-1] if len(entry["loc"]) > 1 else "?"
            entry["msg"] = f"body is not JSON: {reason} at character {position}"
            # The bytes as received (FastAPI read them to parse them, and the request
            # keeps them); error.body is the text json guessed an encoding for.
            entry["input"] = body_start(await request.body())
        detail.append(entry)
    return JSONResponse({"detail": detail}, status_code=422)


async def api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(
        {"detail": error.detail, "field": error.field}, status_code=error.status_code
    )
