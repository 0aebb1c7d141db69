"""`EventReporter`: a streamer's events on their way to the coordinator, in order.

The rank streams must not wait on the coordinator for every batch, so events queue here
and one thread sends them: everything queued goes in one call, at most one call every
`min_interval_s`, so under load the calls grow instead of multiplying (at 500 batches/s
and 0.1 s about 100 events a call, 10 calls a second, not 1000: a call costs the
coordinator far more than an event in it), and a quiet streamer sends an empty call
every `heartbeat_s` (the coordinator shows it alive; the answer carries the current
config version). `call` queues an event and waits for its answer (the events before it
have arrived by then; it goes at once): how a stream asks whether it may open an epoch.

If the coordinator does not answer, the thread tries again with the same events (after
1, 2, 4 ... up to 10 s), so a coordinator restart loses nothing; up to `max_queued`
events wait, beyond that the oldest are dropped (they only feed /stats) and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from packer.contract.cursor import TicketError

log = logging.getLogger("navit.service.streamers")

Send = Callable[[list[dict[str, Any]]], dict[str, Any]]


class EventReporter:
    """Queues events and sends them with `send` from one thread (see the module doc)."""

    def __init__(
        self,
        send: Send,
        heartbeat_s: float = 1.0,
        min_interval_s: float = 0.1,
        max_queued: int = 100_000,
    ) -> None:
        self._send = send
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self._max_queued = max_queued
        self._cond = threading.Condition()
        self._queue: deque[tuple[dict[str, Any] | None, Future | None]] = deque()
        # Kept with the queue, under the lock: its events (not flush marks), and its
        # items someone awaits (a call's or a flush's future).
        self._posted = 0
        self._awaited = 0
        self._stopping = False
        self.dropped = 0
        self.config_version: int | None = None  # as of the last answer
        self.furthest_epoch = -1
        self._thread = threading.Thread(target=self._run, name="navit-reporter", daemon=True)
        self._thread.start()

    def post(self, event: dict[str, Any]) -> None:
        """Queue an event; it leaves with the next call."""
        self._put(event, None)

    def call(self, event: dict[str, Any], timeout: float = 60.0) -> None:
        """Queue an event and wait until the coordinator took it: TicketError if it
        refused it, TimeoutError if no answer came within `timeout`."""
        future: Future = Future()
        self._put(event, future)
        error = future.result(timeout)
        if error is not None:
            raise TicketError(*error)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far has arrived (or `timeout` passed)."""
        future: Future = Future()
        self._put(None, future)
        try:
            future.result(timeout)
        except TimeoutError:
            log.warning("the coordinator did not take %d events within %.0f s", len(self), timeout)

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (up to `timeout`), then end the thread."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _put(self, event: dict[str, Any] | None, future: Future | None) -> None:
        with self._cond:
            self._queue.append((event, future))
            self._posted += event is not None
            self._awaited += future is not None
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Drop the oldest posted events beyond max_queued (never one a caller awaits),
        with the lock held: only the queue's head is touched, the awaited items met
        there (a few: their callers block) go back in front, in order."""
        excess = self._posted - self._max_queued
        if excess <= 0:
            return
        awaited: list[tuple[dict[str, Any] | None, Future | None]] = []
        while excess > 0 and self._queue:
            item = self._queue.popleft()
            if item[1] is None:  # a posted event (every item without a future is one)
                excess -= 1
                self._posted -= 1
                self.dropped += 1
            else:
                awaited.append(item)
        self._queue.extendleft(reversed(awaited))

    def _due(self, since: float) -> float | None:
        """Seconds until the next call is due (0: now; None: stop), with the lock held."""
        if self._stopping and not self._queue:
            return None
        waited = time.monotonic() - since
        if not self._queue:
            return self.heartbeat_s - waited  # a heartbeat when due
        if self._stopping or self._awaited:
            return 0.0  # someone waits for an answer
        return self.min_interval_s - waited

    def _run(self) -> None:
        delay = 1.0
        sent_at = float("-inf")
        while True:
            with self._cond:
                while (due := self._due(sent_at)) is not None and due > 0:
                    self._cond.wait(due)
                if due is None:
                    return
                batch = list(self._queue)
                self._queue.clear()
                posted, awaited = self._posted, self._awaited
                self._posted = self._awaited = 0
            events = [event for event, _ in batch if event is not None]
            try:
                answer = self._send(events)
            except Exception as error:  # noqa: BLE001 - the coordinator is away: try again
                log.warning("could not send %d events to the coordinator: %s", len(events), error)
                with self._cond:
                    self._queue.extendleft(reversed(batch))  # first again, in order
                    self._posted += posted
                    self._awaited += awaited
                    self._trim()
                    if self._stopping:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 1.0
            sent_at = time.monotonic()
            self.config_version = answer.get("config_version", self.config_version)
            self.furthest_epoch = max(self.furthest_epoch, int(answer.get("furthest_epoch", -1)))
            errors = answer.get("errors", {})
            position = 0
            for event, future in batch:
                if future is not None:
                    error = errors.get(str(position)) if event is not None else None
                    future.set_result(error)
                if event is not None:
                    position += 1
