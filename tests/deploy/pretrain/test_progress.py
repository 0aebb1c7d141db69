"""What the supervisor reads and shows: metrics.jsonl incrementally, the EMA, the line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from deploy.pretrain.progress import (
    PLAIN_LINE_INTERVAL_S,
    MetricsTail,
    ProgressLine,
    run_status,
    smoothed,
    status_fields,
)


def test_metrics_tail_reads_new_lines_and_follows_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:5])  # line 4 being written
    assert [r["step"] for r in tail.read()] == [1, 2, 3]
    with open(path, "a") as handle:
        handle.write(lines[3][5:] + "\n")
    assert [r["step"] for r in tail.read()] == [4]
    # A resumed trainer rewrites the file with the lines up to its checkpoint.
    path.write_text("\n".join(lines[:2]) + "\n")
    assert [r["step"] for r in tail.read()] == [1, 2]
    assert sorted(tail.records) == [1, 2]
    assert tail.latest["step"] == 2


def test_smoothed_starts_at_the_first_value() -> None:
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    values = smoothed([1.0, 0.0, 0.0, 0.0])
    assert values[0] == 1.0 and values == sorted(values, reverse=True)


def _stats(images: int, version: int) -> dict:
    return {
        "packing_efficiency": 0.964,
        "delivered_efficiency": 0.961,
        "config_version": version,
        "throughput": {"last_minute": {"images_per_s": 310.4}, "run": {"images": images}},
    }


def test_the_line_shows_the_mean_of_recent_steps_and_the_services_rates() -> None:
    records = [{"step": s, "loss": 10.0 if s <= 5 else 1.0, "accuracy": 0.5} for s in range(1, 26)]
    status = run_status(records, _stats(images=120, version=1))
    assert status["step"] == 25
    assert status["loss"] == pytest.approx(1.0)  # the last 20 steps only
    assert status_fields(status) == [
        "loss 1.000",
        "acc 0.50",
        "310 img/s",
        "packing 96.4%",
        "delivered 96.1%",
    ]
    assert status_fields(run_status(records, _stats(images=120, version=3)))[-1] == "config v3"


def test_the_line_says_it_waits_until_the_first_batches_arrive() -> None:
    assert status_fields(run_status([], None)) == ["waiting for the first batches"]
    assert status_fields(run_status([], _stats(images=0, version=1))) == [
        "waiting for the first batches"
    ]


def test_validation_lines_are_kept_apart_and_shown_on_the_line_and_in_the_summary(
    tmp_path: Path,
) -> None:
    from deploy.pretrain.progress import run_summary

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0, "accuracy": 0.5} for s in (1, 2, 3, 4)]
    lines.insert(
        2, {"eval": True, "step": 2, "eval_loss": 1.4, "eval_accuracy": 0.3, "eval_images": 9}
    )
    lines.append(
        {"eval": True, "step": 4, "eval_loss": 0.9, "eval_accuracy": 0.6, "eval_images": 9}
    )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tail = MetricsTail(path)
    assert [r["step"] for r in tail.read()] == [1, 2, 3, 4]  # step records only
    assert [r["eval_loss"] for r in tail.evals_in_order()] == [1.4, 0.9]
    status = run_status(tail.in_order(), None, tail.evals_in_order())
    assert status_fields(status)[:3] == ["loss 1.000", "acc 0.50", "val acc 0.60"]
    summary = run_summary("finished", 5.0, tail.in_order(), 4, None, [], tail.evals_in_order())
    assert (
        "validation (9 held-out images): loss 1.400 -> 0.900, accuracy 0.30 -> 0.60" in (summary[2])
    )
    tail.reset()
    assert tail.evals == {} and tail.records == {}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _status(step: int) -> dict:
    return {"step": step, "loss": 1.0, "accuracy": 0.5}


def test_off_a_terminal_the_bar_becomes_plain_lines_every_10_s_and_one_at_the_end(capsys):
    stderr, clock = io.StringIO(), _Clock()
    line = ProgressLine(300, bar=True, stream=stderr, clock=clock)
    assert not line.bar
    line.show(_status(1))  # the first state at once
    clock.now = 5.0
    line.show(_status(20))  # within 10 s: kept for later
    clock.now = PLAIN_LINE_INTERVAL_S
    line.show(_status(40))
    clock.now = 12.0
    line.show(_status(45))
    line.close()
    line.close()
    assert stderr.getvalue() == ""
    printed = capsys.readouterr().out.splitlines()
    assert [p.split(" | ")[0] for p in printed] == ["step 1/300", "step 40/300", "step 45/300"]
    assert printed[-1] == "step 45/300 | loss 1.000 | acc 0.50 | waiting for the first batches"


def test_on_a_terminal_the_bar_is_drawn_there(capsys):
    terminal = _FakeTerminal()
    line = ProgressLine(300, bar=True, stream=terminal)
    assert line.bar
    line.show(_status(120))
    line.close()
    assert "120/300" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert capsys.readouterr().out == ""
