"""The request guard: the bearer token and a body size cap, checked before any body is read.

A pure ASGI middleware, outside FastAPI's body parsing: FastAPI reads and parses a
request's whole JSON body before it runs the route's dependencies, the token check
among them, so without this guard a 100 MB body without a token is buffered and parsed
and only then refused. Here, for a mutating method (POST, PUT, PATCH, DELETE):

1. with a token configured, a request without `Authorization: Bearer <token>` gets 401
   at once, its body never read (the server discards what the client still sends);
2. a `Content-Length` above `max_body_bytes` gets 413 at once;
3. otherwise the body is received here, counted as it arrives (a chunked body has no
   Content-Length), and a body that passes the cap gets 413 as soon as it does; a body
   within the cap is handed on to the app unchanged.

Reads (GET, HEAD, OPTIONS) take no body in this API; they pass through, a declared
Content-Length above the cap still gets 413.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from packer.contract.auth import AUTH_HEADER, bearer_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHORIZED_DETAIL = "missing or wrong bearer token: send 'Authorization: Bearer <token>'"


def too_large_detail(limit: int) -> str:
    return (
        f"request body exceeds the service's limit of {limit} bytes (max_body_bytes, "
        "NAVIT_MAX_BODY_BYTES)"
    )


class RequestGuard:
    """Refuses unauthenticated mutations (401) and oversized bodies (413) before the app
    reads them; see the module docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        mutating = scope["method"].upper() in MUTATING_METHODS
        authorized = self.token is None or bearer_matches(
            headers.get(AUTH_HEADER.encode()), self.token
        )
        if mutating and not authorized:
            await _reply(
                send, 401, {"detail": UNAUTHORIZED_DETAIL}, ((b"www-authenticate", b"Bearer"),)
            )
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        if not mutating:
            await self.app(scope, receive, send)
            return
        body = await self._receive_body(receive)
        if body is None:
            await self._too_large(send)
            return
        await self.app(scope, _body_again(body, receive), send)

    async def _receive_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the cap (the rest is left unread)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body, then disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        detail = {"detail": too_large_detail(self.max_body_bytes), "field": "body"}
        await _reply(send, 413, detail)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers by lower-case name; the first of repeated ones, as Starlette."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(name.lower(), value)
    return headers


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    raw = headers.get(b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # the server refuses a malformed one itself


def _body_again(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the buffered body, then waits for the disconnect."""
    delivered = False

    async def receive_again() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def _reply(
    send: Send,
    status: int,
    content: dict[str, Any],
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
