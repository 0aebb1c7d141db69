"""The supervisor's child processes: each in a session of its own, output in a log file.

Why sessions: the terminal's Ctrl-C then reaches only the supervisor, which stops its
children in order (trainers first, the service with its Ray last); and a session is the
unit we can sweep for leftovers (Ray workers put themselves in their own process groups,
but they stay in the session). Each child also asks the kernel for SIGTERM should the
supervisor die without cleaning up (PR_SET_PDEATHSIG), so even `kill -9` of the
supervisor leaves none.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def exit_with_parent(parent: int) -> Callable[[], None]:
    """A `preexec_fn`: the child gets SIGTERM when `parent` dies (Linux; a no-op elsewhere)."""

    def preexec() -> None:
        # Elsewhere the supervisor's own cleanup is all there is.
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid` (Linux /proc; [] elsewhere)."""
    members: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, session, ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class Child:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: BinaryIO = open(log_path, "ab")  # noqa: SIM115 closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C at the terminal reaches only the supervisor
            preexec_fn=exit_with_parent(os.getpid()),
        )
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int, group: bool = True) -> None:
        try:
            if group:
                os.killpg(self.pid, signum)
            elif self.process.poll() is None:
                self.process.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace_s: float, group: bool = True) -> int | None:
        """SIGTERM (the group, or only the leader so it can shut its own children down
        in order), SIGKILL after `grace_s`, then sweep what is left of the session."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM, group=group)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        self.sweep()
        self._log.close()
        return self.process.returncode

    def sweep(self, grace_s: float = 3.0) -> None:
        """End what the child left in its session: Ray workers leave its process group
        but not its session, and exit by themselves soon after their raylet."""
        deadline = time.monotonic() + grace_s
        while (left := session_members(self.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the child's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def exit_description(self) -> str:
        """'exited (1)' or 'was killed by SIGKILL' (only once it has ended)."""
        code = self.process.returncode
        return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for torch.distributed's rendezvous)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
