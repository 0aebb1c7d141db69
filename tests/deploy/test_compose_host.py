"""deploy/compose.host.yml: the stack on the host's network changes only addresses and
ports, and everything stays on loopback. (It runs for real in `make compose-test`.)"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from compose_local import COMPOSE_FILE, REPO, load_compose

HOST_FILE = REPO / "deploy/compose.host.yml"
# docker-compose.yml's addresses and ports -> the host override's (deploy/compose.host.yml).
RENAMED = {
    "ray-head:6379": "127.0.0.1:6390",
    "127.0.0.1:6379": "127.0.0.1:6390",
    "--port=6379": "--port=6390",
    "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1",
    "--dashboard-port=8265": "--dashboard-port=18265",
    "--host=0.0.0.0": "--host=127.0.0.1",
    "--api-port=8000": "--api-port=18000",
    "--flight-port=8815": "--flight-port=18815",
    "--source=grpc://packer:8815": "--source=grpc://127.0.0.1:18815",
    "http://127.0.0.1:8000/readyz": "http://127.0.0.1:18000/readyz",
}
# Flags a Ray node needs only when several share one network namespace.
HOST_ONLY = ("--node-ip-address=127.0.0.1", "--ray-client-server-port=", "--dashboard-agent-")


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
    text = HOST_FILE.read_text()
    assert "0.0.0.0" not in text
    for name in ("ray-head", "ray-worker"):
        assert "--node-ip-address=127.0.0.1" in services[name]["command"], name
    assert (
        "--node-ip-address=127.0.0.1" in services["packer"]["environment"]["RAY_START_EXTRA_ARGS"]
    )
    # Each worker container may use the cores Ray schedules onto it, no more.
    assert services["ray-worker"]["cpus"] == "${RAY_WORKER_NUM_CPUS:-4}"
    assert "--num-cpus=${RAY_WORKER_NUM_CPUS:-4}" in services["ray-worker"]["command"]


@pytest.mark.parametrize("override", ["compose.host.yml", "compose.gpu.yml"])
def test_overrides_validate_with_docker_compose(override: str) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is absent (`make test-tools` installs it)")
    command = [binary, "-f", str(COMPOSE_FILE), "-f", str(REPO / "deploy" / override)]
    done = subprocess.run(
        [*command, "config", "-q"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
