"""`StreamerPool`: the job's streamers as Ray actors, started, watched and stopped.

`navit serve --streamers N` starts N named actors (`navit-streamer-<job>-<i>`), spread
over the nodes that run fill tasks (those with CPUs: not a head or packer node started
with --num-cpus=0): streamer i goes to the i-th of them, round robin, in a fixed order,
by a soft node affinity, so a restarted streamer whose node is gone goes to another.
Round robin rather than Ray's SPREAD strategy, so that where streamers land is a fixed
function of the nodes present at start (compose-test once found both of its streamers
in one of its two ray-worker containers). Each needs one free CPU to be placed, as
every default Ray actor does, and none once running.
Each runs a `Streamer` (service.streamers.streamer) on its node's IP: 127.0.0.1 with the
embedded local Ray, which listens on loopback only, the node's address on a cluster.

Failures:
- A streamer that cannot start (its port taken, the coordinator out of reach, no node
  to place it on within `streamer_start_timeout_s`) stops `start` with one line
  (StreamerStartError) naming the streamer, its node and the reason; the others are
  killed.
- A streamer whose process dies (`kill -9`, a node lost) is restarted by Ray
  (`max_restarts`): the new process starts a new Flight server, perhaps on another port,
  and registers it with the coordinator, which answers get_flight_info with it from
  then on. Its ranks resume at their cursors: every batch is a pure function of the
  cursor and the config history, which the coordinator keeps.
- One that fails to start again after a restart registers its failure; one that Ray
  gives up on is found by the watch thread: either way the coordinator answers its
  ranks with that reason instead of a location.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from service.job.streamer_registry import StreamerRegistry
from service.streamers.client import CoordinatorClient
from service.streamers.streamer import Streamer, StreamerSpec

log = logging.getLogger("navit.service.streamers")

# How often the watch thread asks each actor whether it is alive.
WATCH_INTERVAL_S = 2.0


class StreamerStartError(OSError):
    """A streamer could not start; the message says which, where and why, in one line.
    An OSError, as a port in use is: `navit serve` says "cannot start the service"."""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class StreamerActor:
    """The Ray actor of one streamer: its process is the streamer's."""

    def __init__(self, spec: StreamerSpec) -> None:
        self.node = ray.util.get_node_ip_address()
        self.error: str | None = None
        self.streamer: Streamer | None = None
        try:
            self.streamer = Streamer(spec, self.node)
        except Exception as error:  # noqa: BLE001 - reported by ready(), in one line
            self.error = _one_line(f"{type(error).__name__}: {error}")
            self._report_failure(spec)

    def _report_failure(self, spec: StreamerSpec) -> None:
        """Tell the coordinator this streamer cannot serve (best effort: it may be the
        coordinator that is out of reach)."""
        try:
            client = CoordinatorClient(
                spec.coordinator,
                key=spec.key,
                streamer=spec.streamer,
                token=spec.token,
                tls_root=spec.tls_cert,
                timeout_s=10.0,
            )
            client.register_failure(f"on {self.node}: {self.error}")
            client.close()
        except Exception:  # noqa: BLE001, S110 - nothing more to tell anyone
            pass

    def ready(self) -> dict[str, Any]:
        """{"node", "location", "pid"}, or {"node", "error"} when it could not start."""
        if self.streamer is None:
            return {"node": self.node, "error": self.error}
        return {"node": self.node, "location": self.streamer.location, "pid": os.getpid()}

    def process_id(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        if self.streamer is not None:
            self.streamer.stop()


class StreamerPool:
    """The running streamer actors of one job."""

    def __init__(self, actors: list[Any], registry: StreamerRegistry) -> None:
        self.actors = actors
        self.registry = registry
        self._stop = threading.Event()
        self._watch = threading.Thread(
            target=self._watch_actors, name="navit-streamers", daemon=True
        )
        self._watch.start()

    @classmethod
    def start(
        cls,
        specs: list[StreamerSpec],
        registry: StreamerRegistry,
        *,
        max_restarts: int,
        timeout_s: float,
    ) -> StreamerPool:
        """Start one actor per spec and wait until each serves (StreamerStartError)."""
        tag = secrets.token_hex(4)
        names = [f"navit-streamer-{tag}-{spec.streamer}" for spec in specs]
        actor_class = ray.remote(StreamerActor)
        actors = [
            actor_class.options(
                name=name,
                max_restarts=max_restarts,
                max_task_retries=-1,  # a call to a restarting streamer waits for it
                scheduling_strategy=placement,
            ).remote(spec)
            for name, spec, placement in zip(names, specs, _placements(len(specs)), strict=True)
        ]
        try:
            _wait_ready(actors, timeout_s)
        except BaseException:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise
        return cls(actors, registry)

    def pids(self) -> list[int]:
        """The process id of each streamer (found through Ray: tests kill them)."""
        return ray.get([actor.process_id.remote() for actor in self.actors])

    def stop(self, timeout_s: float) -> None:
        """Stop every streamer (its streams tell trainers to reconnect, its last events
        reach the coordinator), then end the actors for good."""
        self._stop.set()
        stops = [actor.stop.remote() for actor in self.actors]
        ray.wait(stops, num_returns=len(stops), timeout=timeout_s)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self._watch.join(timeout_s)

    def _watch_actors(self) -> None:
        """Mark a streamer failed once Ray gave up restarting it."""
        pending: dict[int, Any] = {}
        while not self._stop.wait(WATCH_INTERVAL_S):
            for i, actor in enumerate(self.actors):
                if i not in pending:
                    pending[i] = actor.process_id.remote()
            done, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
            for i, ref in list(pending.items()):
                if ref not in done:
                    continue  # restarting (the call waits for it) or busy
                del pending[i]
                try:
                    ray.get(ref)
                except ActorDiedError as error:
                    if not self._stop.is_set():
                        reason = f"Ray gave up restarting it: {_one_line(str(error), 160)}"
                        self.registry.failed(i, reason)
                except RayError:
                    pass  # a restart in progress: asked again next time


def _placements(count: int) -> list[Any]:
    """Where each streamer goes: round robin over the alive nodes with CPUs, ordered by
    address (a soft affinity: elsewhere if the node is gone); SPREAD if Ray names none."""
    nodes = sorted(
        (node["NodeManagerAddress"], node["NodeID"])
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
    )
    if not nodes:
        return ["SPREAD"] * count
    return [
        NodeAffinitySchedulingStrategy(nodes[i % len(nodes)][1], soft=True) for i in range(count)
    ]


def _wait_ready(actors: list[Any], timeout_s: float) -> None:
    """Wait for every actor's ready(); the first failure is a StreamerStartError."""
    refs = {actor.ready.remote(): i for i, actor in enumerate(actors)}
    deadline = time.monotonic() + timeout_s
    waiting = list(refs)
    while waiting:
        left = deadline - time.monotonic()
        done, waiting = ray.wait(waiting, num_returns=1, timeout=max(left, 0))
        if not done:
            late = sorted(refs[ref] for ref in waiting)
            raise StreamerStartError(
                f"streamer {late[0]} did not start within {timeout_s:.0f} s: no Ray node "
                "could take it (a streamer needs a node with 1 CPU free; see `ray status`)"
                + (f", nor {len(late) - 1} more" if len(late) > 1 else "")
            )
        (ref,) = done
        i = refs[ref]
        try:
            info = ray.get(ref)
        except RayError as error:
            raise StreamerStartError(
                f"streamer {i} died while starting: {_one_line(str(error))}"
            ) from None
        if info.get("error"):
            raise StreamerStartError(
                f"streamer {i} cannot start on {info['node']}: {info['error']}"
            )
