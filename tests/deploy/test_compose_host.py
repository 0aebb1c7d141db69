"""deploy/compose.host.yml: the stack on the host's network changes only addresses and
ports, and everything stays on loopback. (It runs for real in `make compose-test`.)"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from tests.deploy.compose_local import COMPOSE_FILE, REPO, load_compose

HOST_FILE = REPO / "deploy/compose.host.yml"
# docker-compose.yml's addresses and ports -> the host override's (deploy/compose.host.yml).
RENAMED = {
    "ray-head:6379": "ray-head:6390",
    "127.0.0.1:6379": "127.0.0.1:6390",
    "--port=6379": "--port=6390",
    "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1",
    "--dashboard-port=8265": "--dashboard-port=28265",
    "--host=0.0.0.0": "--host=127.0.0.1",
    "--api-port=8000": "--api-port=28000",
    "--flight-port=8815": "--flight-port=28815",
    "packer:8815": "packer:28815",
    "http://127.0.0.1:8000/readyz": "http://127.0.0.1:28000/readyz",
}
# Flags a Ray node needs only when several share one network namespace.
HOST_ONLY = ("--node-ip-address=127.0.0.1", "--dashboard-agent-listen-port=0")


def renamed(words: list[str]) -> list[str]:
    out = []
    for word in words:
        for old, new in RENAMED.items():
            word = word.replace(old, new)
        out.append(word)
    return out


def host_services() -> dict[str, Any]:
    return load_compose(HOST_FILE)["services"]


def test_host_override_changes_only_addresses_and_ports_of_each_command() -> None:
    base = load_compose()["services"]
    for name, service in host_services().items():
        if "command" in service:
            kept = [w for w in service["command"] if not w.startswith(HOST_ONLY)]
            assert kept == renamed(base[name]["command"]), name
        if "healthcheck" in service:
            assert service["healthcheck"]["test"] == renamed(base[name]["healthcheck"]["test"])


def test_host_override_puts_every_service_on_the_host_network_and_on_loopback() -> None:
    services = host_services()
    assert set(services) == set(load_compose()["services"])
    for name, service in services.items():
        assert service["network_mode"] == "host", name
    assert "0.0.0.0" not in HOST_FILE.read_text()
    # Host networking cannot publish ports (docker refuses the container): none here,
    # and none in docker-compose.yml (they are docker-compose.override.yml's).
    merged = {name: {**base, **services[name]} for name, base in load_compose()["services"].items()}
    assert not [name for name, service in merged.items() if "ports" in service]
    # The head is told its address; the other nodes take the one they reach it from,
    # by a service name that is a host name for loopback.
    assert "--node-ip-address=127.0.0.1" in services["ray-head"]["command"]
    assert services["ray-head"]["environment"]["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    for name, service in services.items():
        assert service["extra_hosts"] == ["ray-head:127.0.0.1", "packer:127.0.0.1"], name
    # Each worker container may use the cores Ray schedules onto it, no more.
    assert services["ray-worker"]["cpus"] == "${RAY_WORKER_NUM_CPUS:-4}"
    assert "--num-cpus=${RAY_WORKER_NUM_CPUS:-4}" in services["ray-worker"]["command"]


def test_host_override_validates_with_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is absent (`make test-tools` installs it)")
    command = [binary, "-f", str(COMPOSE_FILE), "-f", str(HOST_FILE)]
    done = subprocess.run(
        [*command, "config", "-q"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
