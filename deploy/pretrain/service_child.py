"""The packer service as the supervisor's child: `navit serve ... --ready-file`, and how
the supervisor knows it is up (its ready file names its pid and /readyz answers 200).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from deploy.pretrain.control_plane import ControlPlane
from deploy.pretrain.options import PretrainOptions
from deploy.pretrain.processes import Child
from deploy.pretrain.run_dir import RunDir
from deploy.ready_file import ReadyFile

SERVICE_START_TIMEOUT_S = 300.0  # a first index scan of a large folder takes a while
POLL_INTERVAL_S = 0.2


def navit(*args: str) -> list[str]:
    """`navit ARGS` from this interpreter's environment."""
    return [sys.executable, "-m", "deploy.cli", *args]


def service_argv(options: PretrainOptions, run_dir: RunDir) -> list[str]:
    """The `navit serve` command line of this run."""
    o = options
    argv = navit(
        *(["--verbose"] if o.verbose else []),
        "serve",
        o.dataset,
        f"--host={o.host}",
        f"--api-port={o.api_port}",
        f"--flight-port={o.flight_port}",
        f"--state-dir={run_dir.path / 'state'}",
        f"--ready-file={run_dir.ready_file}",
        "--log-level=warning",
    )
    if o.num_cpus is not None:
        argv.append(f"--num-cpus={o.num_cpus}")
    if o.ray_address:
        argv.append(f"--ray-address={o.ray_address}")
    if o.config_file is not None:
        argv.append(f"--config={o.config_file}")
    argv += [f"--set={override}" for override in o.overrides]
    if o.verify_sizes > 0:
        argv.append(f"--verify-sizes={o.verify_sizes}")
    if o.val_fraction > 0:
        argv += [f"--holdout-fraction={o.val_fraction}", f"--holdout-seed={o.val_seed}"]
    return argv


@dataclass
class ServiceStart:
    """How a start ended: ready (with its addresses and control plane) or not (why)."""

    ready: ReadyFile | None = None
    control: ControlPlane | None = None
    problem: list[str] | None = None  # lines to show when it did not start


def start_service(
    options: PretrainOptions,
    run_dir: RunDir,
    env: dict[str, str],
    stopping: Callable[[], bool],
) -> tuple[Child, ServiceStart]:
    """Start the service and wait until it is ready, it fails, `stopping()` says so, or
    SERVICE_START_TIMEOUT_S passes."""
    run_dir.ready_file.unlink(missing_ok=True)  # one a crashed run left must not count
    argv = service_argv(options, run_dir)
    # ray.init() with no address joins a cluster some `ray start` left on this
    # machine; a local job wants its own Ray, sized by --num-cpus.
    if not options.ray_address:
        env = {**env, "RAY_ADDRESS": "local"}
    child = Child("service", argv, env, run_dir.log("service"))
    run_dir.event("service_started", pid=child.pid, argv=argv)
    control: ControlPlane | None = None
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        if child.poll() is not None:
            problem = failure_lines(child)
            if "address already in use" in child.tail().lower():
                problem.append("a port is taken: pass --api-port/--flight-port (0: any)")
            return child, ServiceStart(control=control, problem=problem)
        ready = ReadyFile.read(run_dir.ready_file)
        if ready is not None and ready.pid == child.pid:
            control = control or ControlPlane(ready.api)
            if control.ready():
                return child, ServiceStart(ready=ready, control=control)
        time.sleep(POLL_INTERVAL_S)
    problem = None
    if not stopping():
        problem = [f"the service was not ready within {SERVICE_START_TIMEOUT_S:.0f} s:"]
        problem += _indented(child.tail())
    return child, ServiceStart(control=control, problem=problem)


def failure_lines(child: Child) -> list[str]:
    """What to show of a service that ended: how, and the end of its log."""
    return [f"the service {child.exit_description()}:", *_indented(child.tail())]


def _indented(text: str) -> list[str]:
    return ["  | " + line for line in text.splitlines()]
