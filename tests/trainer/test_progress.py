"""The trainer's progress: a bar on a terminal, plain periodic lines anywhere else."""

from __future__ import annotations

import io

from trainer.progress import PLAIN_LINE_INTERVAL_S, StepProgress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_plain_line_every_interval_and_one_at_the_end():
    stream, clock = io.StringIO(), Clock()
    progress = StepProgress(300, stream=stream, clock=clock)
    assert not progress.bar
    progress.set_postfix(loss="1.2140", acc="0.520")
    progress.update(10)
    assert stream.getvalue() == ""  # not yet PLAIN_LINE_INTERVAL_S
    clock.now = PLAIN_LINE_INTERVAL_S
    progress.update(110)
    progress.update(1)  # within the next interval: nothing
    progress.close()
    assert stream.getvalue().splitlines() == [
        "train: step 120/300 | loss 1.2140 | acc 0.520",
        "train: step 121/300 | loss 1.2140 | acc 0.520",
    ]
    assert "\r" not in stream.getvalue()


def test_the_end_line_is_not_repeated_when_just_printed():
    stream, clock = io.StringIO(), Clock()
    progress = StepProgress(5, initial=2, stream=stream, clock=clock)
    clock.now = PLAIN_LINE_INTERVAL_S
    progress.update(3)
    progress.close()
    progress.close()
    assert stream.getvalue().splitlines() == ["train: step 5/5"]


def test_on_a_terminal_a_bar_and_disabled_nothing():
    terminal = FakeTerminal()
    progress = StepProgress(10, stream=terminal)
    progress.update(4)
    progress.close()
    assert progress.bar is False and "\r" in terminal.getvalue()
    assert "4/10" in terminal.getvalue()
    for stream in (io.StringIO(), FakeTerminal()):
        quiet = StepProgress(10, enabled=False, stream=stream)
        quiet.update(10)
        quiet.close()
        assert stream.getvalue() == ""
