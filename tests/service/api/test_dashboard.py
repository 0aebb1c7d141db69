"""The dashboard in a real headless browser: it draws the recent packed sequences."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.service.service_testkit import read_endpoint_stream, read_stream

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *extra,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_dashboard_draws_recent_sequences(start, tmp_path):
    service = start()
    batches = read_stream(service.flight_location, 0, 1, epoch=0)
    recent = httpx.get(f"{service.api_url}/sequences/recent?limit=12").json()["sequences"]
    assert recent and len(recent) <= 12
    segments = sum(len(s["segments"]) for s in recent)
    assert batches

    dom = _chromium(f"{service.api_url}/", tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:2000]
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert "error" not in attributes, attributes
    assert int(attributes["sequences-drawn"]) == len(recent)
    assert int(attributes["segments-drawn"]) == segments
    assert int(attributes["points-drawn"]) >= 1
    assert int(attributes["streamers-drawn"]) == 0  # this process sent the batches
    assert dom.stdout.count('class="segment"') == segments
    assert dom.stdout.count('class="padding"') == len(recent)

    screenshot = tmp_path / "dashboard.png"
    shot = _chromium(
        f"{service.api_url}/",
        tmp_path / "profile-shot",
        f"--screenshot={screenshot}",
        "--window-size=1200,900",
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_dashboard_shows_each_streamer_with_its_node_ranks_and_rates(start, tmp_path):
    service = start(streamers=2)
    for rank in range(2):
        read_endpoint_stream(service.flight_location, rank, 2, epoch=0)
    rows = httpx.get(f"{service.api_url}/stats").json()["streamers"]
    assert [r["ranks"] for r in rows] == [[0], [1]]

    dom = _chromium(f"{service.api_url}/", tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert "error" not in attributes, attributes
    assert int(attributes["streamers-drawn"]) == 2
    table = dom.stdout[dom.stdout.index('id="streamers"') :]
    table = table[: table.index("</table>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    assert len(cells) == 2 * 7
    assert cells[0:4] == ["0", "up", "127.0.0.1", "0"] and cells[7:11] == [
        "1",
        "up",
        "127.0.0.1",
        "1",
    ]
