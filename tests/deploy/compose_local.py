"""Run docker-compose.yml's services as local processes, for the deploy tests.

There is no Docker engine on the test machines, so the compose file's commands are run
as they are written, with what the containers would provide swapped for local things:
- `${VAR:-default}` interpolated from a given environment, as compose does;
- the service hostnames (`ray-head`, `packer`) pointed at 127.0.0.1, and every port
  the file names replaced by a free one (several Ray nodes share this host);
- the named volumes' mount points (/data, /state, /ckpt) replaced by temp folders;
- `python`, `ray`, `torchrun` taken from this virtual environment, and `navit` is
  `python -m deploy.cli` of this checkout (the installed console script may belong to
  another checkout of the project).

Every process starts in its own session and with a marker in its environment, which
its descendants inherit: stopping a service ends all it started, Ray's daemons and
torchrun's ranks included, and never touches any other Ray on the machine (`ray stop`
would: it kills every raylet of the host).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.processes import processes_with_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as a dict (YAML merge keys `<<:` resolved by PyYAML)."""
    return yaml.safe_load(path.read_text())


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, recursively: $$, ${V}, ${V:-d}, ${V-d}, $V."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expression = match.group("braced") or match.group("plain")
        for separator in (":-", "-"):
            if separator in expression:
                name, default = expression.split(separator, 1)
                present = env.get(name)
                if separator == ":-":
                    return present if present else default
                return present if present is not None else default
        return env.get(expression, "")

    return _VARIABLE.sub(replace, value)


def variables(text: str) -> set[str]:
    """Names of the variables a compose file uses."""
    names = set()
    for match in _VARIABLE.finditer(text):
        expression = match.group("braced") or match.group("plain")
        if expression:
            names.add(re.split(r":?[-?+]", expression, maxsplit=1)[0])
    return names


MARKER = "NAVIT_TEST_SERVICE"


def marked_processes(marker: str) -> list[int]:
    """Live processes started by the service carrying MARKER=marker, however deep or
    detached (torchrun puts each rank in a session of its own)."""
    return processes_with_env(MARKER, marker)


@dataclass
class LocalService:
    """One service's command running as a local process in its own session."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    marker: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def members(self) -> list[int]:
        """Every live process this service started, however deep or detached."""
        return marked_processes(self.marker)

    def kill(self) -> None:
        """SIGKILL all of it at once: a crash (or a container killed for memory)."""
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the process group (`ray start --block` drains its node and stops its
        daemons), SIGKILL after `grace_s`, then whatever is left of the session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        deadline = time.monotonic() + 5.0
        while self.members() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@dataclass
class LocalCompose:
    """docker-compose.yml's services on this machine (see the module docstring)."""

    root: Path  # temp folder: volumes, logs
    env: dict[str, str]  # the .env of this run (knobs)
    ports: dict[int, int]  # container port -> local port
    # Service names as hostnames, and loopback as the healthchecks write it.
    hosts: tuple[str, ...] = ("ray-head", "packer", "127.0.0.1")
    compose: dict[str, Any] = field(default_factory=load_compose)
    started: list[LocalService] = field(default_factory=list)
    substitutions_used: set[str] = field(default_factory=set)

    def volume_paths(self) -> dict[str, Path]:
        """Mount point in the container -> local folder of that named volume."""
        paths = {}
        for service in self.compose["services"].values():
            for volume in service.get("volumes", []):
                name, mount = volume.split(":")[:2]
                paths[mount] = self.root / "volumes" / name
        return paths

    def _localize(self, token: str) -> str:
        original = token
        for host in self.hosts:
            for inside, outside in self.ports.items():
                token = token.replace(f"{host}:{inside}", f"127.0.0.1:{outside}")
        flag, equals, value = token.partition("=")
        if equals and flag.startswith("--"):
            if value == "0.0.0.0":  # listen on loopback only: nothing outside needs it
                token = f"{flag}=127.0.0.1"
            elif value.isdigit() and int(value) in self.ports and "port" in flag:
                token = f"{flag}={self.ports[int(value)]}"
        for mount, local in sorted(self.volume_paths().items(), key=lambda kv: -len(kv[0])):
            for prefix in ("", "=", "'", '"'):
                at = token.find(prefix + mount)
                end = at + len(prefix + mount)
                if at >= 0 and (end == len(token) or token[end] == "/"):
                    token = token[: at + len(prefix)] + str(local) + token[end:]
                    break
        if token != original:
            self.substitutions_used.add(original)
        return token

    def command(self, name: str) -> list[str]:
        """The service's command, interpolated and localized (tools come from PATH)."""
        service = self.compose["services"][name]
        return [self._localize(t) for t in interpolate(service["command"], self.env)]

    def healthcheck(self, name: str) -> list[str]:
        """The service's healthcheck test as a command line (`CMD` form)."""
        test = self.compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: healthcheck should be the exec form [CMD, ...]"
        return [self._localize(t) for t in interpolate(test[1:], self.env)]

    def is_healthy(self, name: str) -> bool:
        done = subprocess.run(
            self.healthcheck(name),
            env=self.environment(name),
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        return done.returncode == 0

    def tools(self) -> Path:
        """A folder for PATH holding `navit`: this checkout's `python -m deploy.cli`."""
        folder = self.root / "bin"
        navit = folder / "navit"
        if not navit.exists():
            folder.mkdir(parents=True, exist_ok=True)
            navit.write_text(
                "#!/bin/sh\n"
                f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
                f'exec "{sys.executable}" -m deploy.cli "$@"\n'
            )
            navit.chmod(0o755)
        return folder

    def environment(self, name: str) -> dict[str, str]:
        service = self.compose["services"][name]
        values = interpolate(service.get("environment", {}), self.env)
        env = {k: self._localize(str(v)) for k, v in values.items()}
        path = os.pathsep.join([str(self.tools()), str(VENV_BIN), os.environ.get("PATH", "")])
        return {**os.environ, **env, "PATH": path, "PYTHONUNBUFFERED": "1"}

    def start(
        self,
        name: str,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        log_name: str | None = None,
    ) -> LocalService:
        argv = self.command(name) + list(extra_args or [])
        for path in self.volume_paths().values():
            path.mkdir(parents=True, exist_ok=True)
        log_path = self.root / "logs" / f"{log_name or name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        marker = uuid.uuid4().hex
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**self.environment(name), **(env or {}), MARKER: marker},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = LocalService(name, argv, process, log_path, marker)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        # Reverse order: the packer (a Ray driver) before the nodes, the head last.
        for service in reversed(self.started):
            service.stop()
        self.started.clear()


def dockerfile_copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """The (sources, destination) of each COPY instruction of a Dockerfile."""
    copies = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts and parts[0].upper() == "COPY" and not any(p.startswith("--") for p in parts):
            copies.append((parts[1:-1], parts[-1]))
    return copies
