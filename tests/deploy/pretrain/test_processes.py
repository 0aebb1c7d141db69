"""The supervisor's children: output in a log, each in its own session, nothing left
behind by stop(), and none outliving a supervisor killed with -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploy.pretrain.processes import Child, free_port, session_members

REPO = Path(__file__).resolve().parents[3]


def alive(pid: int) -> bool:
    """A live, non-zombie process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def eventually(condition, what: str, timeout: float = 30.0) -> None:
    """Poll until `condition` holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout} s")
        time.sleep(0.05)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_childs_output_goes_to_its_log_and_tail_gives_the_last_lines(tmp_path: Path) -> None:
    child = Child(
        "printer", python("for i in range(30): print(i)"), dict(os.environ), tmp_path / "logs/p.log"
    )
    assert child.process.wait(60) == 0
    assert child.tail(5) == "25\n26\n27\n28\n29"
    assert child.exit_description() == "exited (0)"
    assert child.stop(1.0) == 0


def test_a_child_runs_in_a_session_of_its_own(tmp_path: Path) -> None:
    child = Child("sleeper", ["sleep", "300"], dict(os.environ), tmp_path / "s.log")
    try:
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
        assert session_members(child.pid) == [child.pid]
    finally:
        child.stop(5.0)
    assert child.exit_description() == f"was killed by {signal.SIGTERM.name}"


def test_stop_ends_what_the_child_left_in_its_session(tmp_path: Path) -> None:
    # A grandchild in a process group of its own (as Ray's workers put themselves) that
    # ignores SIGTERM: only the sweep of the session ends it.
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
        import os, signal, subprocess, sys, time
        grandchild = subprocess.Popen(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
            process_group=0,
        )
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        time.sleep(300)
    """
    child = Child("parent", python(code), dict(os.environ), tmp_path / "p.log")
    eventually(lambda: pid_file.exists() and pid_file.read_text(), "started the grandchild")
    grandchild = int(pid_file.read_text())
    assert os.getpgid(grandchild) != child.pid and os.getsid(grandchild) == child.pid
    child.stop(5.0, group=False)
    assert not alive(child.pid)
    # SIGKILL was sent to the grandchild; the kernel ends it a moment later.
    eventually(lambda: not alive(grandchild), "ended by the sweep")
    assert session_members(child.pid) == []


def test_a_child_gets_sigterm_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    supervisor_code = f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from deploy.pretrain.processes import Child
        child = Child("sleeper", ["sleep", "300"], dict(os.environ), Path({str(tmp_path / "c.log")!r}))
        print(child.pid, flush=True)
        time.sleep(300)
    """
    supervisor = subprocess.Popen(python(supervisor_code), stdout=subprocess.PIPE, text=True)
    child_pid = int(supervisor.stdout.readline())
    assert alive(child_pid)
    supervisor.kill()  # no cleanup runs in the supervisor
    supervisor.wait()
    eventually(lambda: not alive(child_pid), "ended after its supervisor died")


def test_free_port_gives_a_port_one_can_bind() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
