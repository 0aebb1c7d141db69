"""CPU time by role: this process (the driver), the workers it started (a Pool's, a
DataLoader's, Ray's), Ray's own processes, and the rest of the machine.

    before = CpuUse.now()
    run()
    spent = CpuUse.now().spent_since(before)   # {"driver": 0.41, "workers": 5.02, ...}

Read from /proc (Linux): every process descending from this one, by its command line.
The machine is shared, so "machine_other" (all busy time minus ours: other people's
work, the kernel's threads) is reported apart and never charged to a run. A process
that ends between the two snapshots is lost (the peers' workers are kept warm, Ray's
live on), and one that starts counts from zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("driver", "workers", "ray_system", "background", "machine_other")

_TICK = os.sysconf("SC_CLK_TCK")
# Ray processes that do no task's work: Ray Data's bookkeeping actors and Ray's agents.
_RAY_SYSTEM_WORKERS = ("Actor", "Agent")


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    command: str  # argv joined by spaces
    cpu_s: float  # user + system time so far


def processes() -> dict[int, Process]:
    """Every process on the machine, read from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        command = argv.replace(b"\0", b" ").decode(errors="replace").strip()
        found[int(entry)] = Process(int(entry), int(fields[1]), command, cpu)
    return found


def descendants(every: dict[int, Process], root: int) -> dict[int, Process]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for process in every.values():
        children.setdefault(process.ppid, []).append(process.pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in every:
            found[pid] = every[pid]
        todo.extend(children.get(pid, []))
    return found


def role_of(
    process: Process,
    root: int,
    workers: frozenset[int] | None,
    named: dict[int, str] | None = None,
) -> str:
    """The process's role in a run: its name in `named` (e.g. "readers"), driver, workers
    (the run's task processes: the given pids, or else Ray's), ray_system (Ray's own
    processes when Ray runs the work), background (what runs beside a run that does not
    use it: Ray, idle, under a Pool's run) or profiler (py-spy, counted nowhere)."""
    if named and process.pid in named:
        return named[process.pid]
    if process.pid == root:
        return "driver"
    command = process.command
    if "py-spy" in command.split(" ", 1)[0]:
        return "profiler"
    if workers is not None:
        return "workers" if process.pid in workers else "background"
    if command.startswith("ray::"):
        name = command.split(" ", 1)[0]
        return "ray_system" if any(part in name for part in _RAY_SYSTEM_WORKERS) else "workers"
    return "ray_system"  # gcs_server, raylet, Ray's Python helpers


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat: all but idle, iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


@dataclass
class CpuUse:
    """A snapshot of CPU seconds so far; `spent_since` splits what a run spent by role."""

    root: int
    machine_s: float
    found: dict[int, Process] = field(default_factory=dict)

    @classmethod
    def now(cls, root: int | None = None) -> CpuUse:
        root = os.getpid() if root is None else root
        return cls(root, machine_busy_s(), descendants(processes(), root))

    def spent_since(
        self,
        before: CpuUse,
        workers: list[int] | None = None,
        named: dict[int, str] | None = None,
    ) -> dict[str, float]:
        """Seconds by role (ROLES, and the names in `named`) between `before` and this
        snapshot; `workers` are the run's task processes (a Pool's), None when Ray runs
        the work."""
        given = None if workers is None else frozenset(workers)
        spent = dict.fromkeys((*ROLES, "profiler", *(named or {}).values()), 0.0)
        for pid, process in self.found.items():
            earlier = before.found.get(pid)
            used = process.cpu_s - (earlier.cpu_s if earlier else 0.0)
            spent[role_of(process, self.root, given, named)] += used
        profiler = spent.pop("profiler")  # py-spy's own: neither the run's nor another's
        ours = sum(spent.values())
        spent["machine_other"] = max(self.machine_s - before.machine_s - ours - profiler, 0.0)
        return spent

    def pids(self, role: str, workers: list[int] | None = None) -> list[int]:
        """The pids that have `role` in a run with these `workers` (see spent_since)."""
        given = None if workers is None else frozenset(workers)
        return sorted(pid for pid, p in self.found.items() if role_of(p, self.root, given) == role)
