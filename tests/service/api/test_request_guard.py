"""The request guard on a real uvicorn server: the token is checked before a body is read,
and bodies over max_body_bytes get 413, declared or streamed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from service.api.main import create_app
from service.job import ServiceJob
from service.serve import _ApiServer
from service.settings import ServiceSettings
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG

TOKEN = "guard-token"
LIMIT = 64 * 1024
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(sample_index) -> Iterator[tuple[str, ServiceJob]]:
    """The app on 127.0.0.1 under uvicorn, as `navit serve` runs it (no Ray needed)."""
    job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), dataset="sample")
    app = create_app(job, TOKEN, max_body_bytes=LIMIT)
    server = _ApiServer(app, ServiceSettings(api_port=0, log_level="warning"))
    server.start()
    yield f"http://127.0.0.1:{server.port}", job
    server.stop(5)


def _status_line(port: int, head: bytes, body_part: bytes) -> bytes:
    """Send a request's head and only part of its body, then read the status line.

    The server can only answer before the body is complete if it never waits for it.
    (The socket timeout only ends a hang if it does.)
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body_part)
        return sock.recv(4096).split(b"\r\n", 1)[0]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_unauthenticated_body_is_refused_before_it_is_read(served):
    url, job = served
    head = (
        b"PATCH /config HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    # 64 KiB of a declared 100 MB: the 401 comes back while the client is still sending.
    assert _status_line(_port(url), head, b'{"pack_window": ' + b" " * 65536) == (
        b"HTTP/1.1 401 Unauthorized"
    )
    # A client that sends everything gets the 401 too (the server discards the rest).
    response = httpx.patch(f"{url}/config", content=b"[" * (8 << 20), timeout=60)
    assert response.status_code == 401
    assert "bearer token" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert job.config_version.version == 1


def test_declared_oversized_body_is_a_413_naming_the_limit(served):
    url, job = served
    head = (
        b"POST /simulate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
    )
    assert _status_line(_port(url), head, b"{") == b"HTTP/1.1 413 Request Entity Too Large"

    response = httpx.patch(f"{url}/config", content=b" " * (2 * LIMIT), headers=GOOD)
    assert response.status_code == 413
    body = response.json()
    assert str(LIMIT) in body["detail"] and "max_body_bytes" in body["detail"]
    assert body["field"] == "body"


def test_streamed_body_past_the_limit_is_a_413_before_it_ends(served):
    url, _ = served
    head = (
        b"POST /simulate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB chunks, no final 0-chunk sent
    assert _status_line(_port(url), head, chunk * (LIMIT // 0x4000 + 1)) == (
        b"HTTP/1.1 413 Request Entity Too Large"
    )

    def chunks() -> Iterator[bytes]:
        for _ in range(2 * LIMIT // 1024):
            yield b" " * 1024

    response = httpx.post(f"{url}/simulate", content=chunks(), headers=GOOD)
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]


def test_bodies_within_the_limit_reach_the_app(served):
    url, job = served
    padded = b'{"max_images_per_seq": 5}' + b" " * (LIMIT - 100)
    response = httpx.patch(
        f"{url}/config", content=padded, headers={**GOOD, "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert job.config_version.config.max_images_per_seq == 5

    def chunks() -> Iterator[bytes]:
        yield b'{"step": 3, "step_time_s": 1.0,'
        yield b' "data_wait_s": 0.5}'

    report = httpx.post(
        f"{url}/trainers/0/report",
        content=chunks(),
        headers={**GOOD, "Content-Type": "application/json"},
    )
    assert report.status_code == 200, report.text
    assert httpx.get(f"{url}/stats").status_code == 200  # reads need no token
