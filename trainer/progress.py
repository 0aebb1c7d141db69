"""The trainer's progress: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which a log file or a pipe keeps as one
ever-growing line of overwritten states. So the bar is drawn only when its stream is a
terminal; elsewhere a plain line is printed every `PLAIN_LINE_INTERVAL_S` seconds and
once more at the end:

    train: step 120/300 | loss 1.2140 | acc 0.520

`update`, `set_postfix` and `close` are tqdm's, so the loop reads the same either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PLAIN_LINE_INTERVAL_S = 10.0


class StepProgress:
    """Steps done out of `total`: a bar on a terminal, else a plain line every 10 s
    (`clock` says when) and at `close()`; nothing when not `enabled`."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0 or initial < 0:
            raise ValueError(f"total and initial must be >= 0, got {total}, {initial}")
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.step = initial
        self.enabled = enabled
        self._clock = clock
        self._fields: dict[str, Any] = {}
        self._bar: Any = None
        self._shown_step: int | None = None
        self._last_line = clock()
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", file=self.stream)

    @property
    def bar(self) -> bool:
        """True when a tqdm bar is drawn (enabled, on a terminal)."""
        return self._bar is not None

    def set_postfix(self, **fields: Any) -> None:
        self._fields = fields
        if self._bar is not None:
            self._bar.set_postfix(**fields)

    def update(self, n: int = 1) -> None:
        self.step += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self._clock() - self._last_line >= PLAIN_LINE_INTERVAL_S:
            self._print_line()

    def close(self) -> None:
        """End the bar, or print the last state unless it was just printed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._shown_step != self.step:
            self._print_line()
        self.enabled = False

    def line(self) -> str:
        """The plain line of the current state."""
        fields = [f"{name} {value}" for name, value in self._fields.items()]
        return " | ".join([f"train: step {self.step}/{self.total}", *fields])

    def _print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._shown_step = self.step
        self._last_line = self._clock()


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal (a bar may redraw there); False for a closed one."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
