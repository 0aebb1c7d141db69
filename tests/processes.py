"""Helpers shared by the tests that run the product's commands as real processes
(tests/deploy, tests/deploy/pretrain/test_supervisor.py): /proc lookups, waiting, and the check
that trainers resumed from their data cursor."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment holds name=value (from /proc; zombies have no
    environment left). A session would not do: torchrun and `navit pretrain` put children
    in sessions of their own, and those can outlive a killed parent."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(
    condition: Callable[[], object],
    what: str,
    process: subprocess.Popen,
    name: str,
    output: Callable[[], str],
    timeout: float = 180.0,
    interval: float = 0.2,
) -> None:
    """Poll `condition` until it holds; fail with the process's output if the process
    exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{name} exited ({process.returncode}) before {what}:\n{output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: not {what} within {timeout} s:\n{output()}")
        time.sleep(interval)


def assert_cursor_continues(metrics: list[dict]) -> None:
    """Each step trained the batch after the previous step's: nothing lost or repeated."""
    for before, after in zip(metrics, metrics[1:], strict=False):
        same_epoch = (after["epoch"], after["next_batch"]) == (
            before["epoch"],
            before["next_batch"] + 1,
        )
        next_epoch = after["epoch"] == before["epoch"] + 1 and after["next_batch"] == 1
        assert same_epoch or next_epoch, (before, after)
