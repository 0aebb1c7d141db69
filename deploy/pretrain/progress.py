"""What the supervisor reads and shows while the job runs: rank 0's metrics.jsonl, the
service's /stats samples, and one progress line: a tqdm bar on a terminal,

    pretrain:  40%|████      | 120/300 [00:31<00:47, loss 1.214 | acc 0.52 | val acc 0.48 | 310 img/s | packing 96.4% | delivered 96.1%]

else (`--no-progress`, or stderr is a log file or a pipe, where a bar's carriage
returns would pile up) a plain line every 10 s and one at the end:

    step 120/300 | loss 1.214 | acc 0.52 | val acc 0.48 | 310 img/s | packing 96.4% | delivered 96.1%

("val acc": the latest validation pass over the held-out images, trainer/evaluate.py.)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from trainer.progress import PLAIN_LINE_INTERVAL_S, is_terminal

RECENT_STEPS = 20  # loss and accuracy on the line: the mean of the last 20 steps


class MetricsTail:
    """The step records (`records`) and validation records (`evals`, "eval": true) of
    metrics.jsonl, by step, read incrementally.

    A resumed trainer rewrites the file (keeping lines up to its checkpoint): the
    supervisor calls `reset()` when it restarts trainers, and a file that shrank or
    changed inode is read again from the start as well.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[int, dict[str, Any]] = {}
        self.evals: dict[int, dict[str, Any]] = {}
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def reset(self) -> None:
        """Forget what was read: the next read() starts from the top of the file."""
        self._inode, self._offset, self._partial = None, 0, b""
        self.records.clear()
        self.evals.clear()

    def read(self) -> list[dict[str, Any]]:
        """New step records since the last call (all of them after a rewrite)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self.reset()
            self._inode = stat.st_ino
        if stat.st_size == self._offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = self._partial + handle.read()
        self._offset += len(data) - len(self._partial)
        *lines, self._partial = data.split(b"\n")
        new = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or "step" not in record:
                continue
            if record.get("eval") and "eval_loss" in record:
                self.evals[int(record["step"])] = record
            elif "loss" in record:
                self.records[int(record["step"])] = record
                new.append(record)
        return new

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.records[max(self.records)] if self.records else None

    def in_order(self) -> list[dict[str, Any]]:
        return [self.records[step] for step in sorted(self.records)]

    def evals_in_order(self) -> list[dict[str, Any]]:
        return [self.evals[step] for step in sorted(self.evals)]


def smoothed(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average (debiased, so the first values are not pulled to 0)."""
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


def stats_sample(stats: dict[str, Any], step: int, t: float) -> dict[str, Any]:
    """One line of stats.jsonl: the service's /stats at `t` seconds, at trainer `step`."""
    minute = stats["throughput"]["last_minute"]
    return {
        "t": round(t, 3),
        "step": step,
        "packing_efficiency": stats.get("packing_efficiency", 0.0),
        "delivered_efficiency": stats.get("delivered_efficiency", 0.0),
        "delivered_efficiency_last_minute": minute["delivered_efficiency"],
        "images_per_s": minute["images_per_s"],
        "images": stats["throughput"]["run"]["images"],
        "config_version": stats.get("config_version"),
    }


def run_status(
    records: list[dict[str, Any]],
    stats: dict[str, Any] | None,
    evals: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The numbers of the progress line: step, recent loss/accuracy, the latest validation
    scores, the service's rates."""
    recent = records[-RECENT_STEPS:]
    status: dict[str, Any] = {"step": records[-1]["step"] if records else 0}
    if recent:
        status["loss"] = sum(r["loss"] for r in recent) / len(recent)
        status["accuracy"] = sum(r["accuracy"] for r in recent) / len(recent)
    if evals:
        status["val_loss"] = evals[-1]["eval_loss"]
        status["val_accuracy"] = evals[-1]["eval_accuracy"]
    if stats is not None:
        status["images_per_s"] = stats["throughput"]["last_minute"]["images_per_s"]
        status["images_delivered"] = stats["throughput"]["run"]["images"]
        status["packing_efficiency"] = stats["packing_efficiency"]
        status["delivered_efficiency"] = stats["delivered_efficiency"]
        status["config_version"] = stats["config_version"]
    return status


def status_fields(status: dict[str, Any]) -> list[str]:
    """`run_status` as the line's fields: ['loss 1.214', 'acc 0.52', '310 img/s', ...]."""
    fields = []
    if "loss" in status:
        fields.append(f"loss {status['loss']:.3f}")
        fields.append(f"acc {status['accuracy']:.2f}")
    if "val_accuracy" in status:
        fields.append(f"val acc {status['val_accuracy']:.2f}")
    if not status.get("images_delivered"):
        fields.append("waiting for the first batches")
    elif "images_per_s" in status:
        fields.append(f"{status['images_per_s']:.0f} img/s")
        fields.append(f"packing {100 * status['packing_efficiency']:.1f}%")
        fields.append(f"delivered {100 * status['delivered_efficiency']:.1f}%")
        if status["config_version"] > 1:
            fields.append(f"config v{status['config_version']}")
    return fields


class ProgressLine:
    """The supervisor's output: a progress bar on `stream` (stderr) when `bar` and it is
    a terminal, else a plain status line every 10 s (`clock` says when) and the last
    one at `close()`; messages are printed above either (stdout)."""

    def __init__(
        self,
        total_steps: int,
        bar: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.stream = sys.stderr if stream is None else stream
        self.bar = bar and is_terminal(self.stream)
        self._clock = clock
        self._tqdm: Any = None
        self._last_plain = float("-inf")
        self._pending: str | None = None  # the latest plain line, not printed yet

    def show(self, status: dict[str, Any]) -> None:
        fields = status_fields(status)
        if self.bar:
            if self._tqdm is None:
                from tqdm import tqdm

                tqdm.monitor_interval = 0  # no monitor thread: children are forked later
                self._tqdm = tqdm(
                    total=self.total_steps, unit="step", desc="pretrain", file=self.stream
                )
            self._tqdm.n = status["step"]
            self._tqdm.set_postfix_str(" | ".join(fields), refresh=False)
            self._tqdm.refresh()
            return
        self._pending = " | ".join([f"step {status['step']}/{self.total_steps}", *fields])
        if self._clock() - self._last_plain >= PLAIN_LINE_INTERVAL_S:
            self._last_plain = self._clock()
            self._print_pending()

    def _print_pending(self) -> None:
        line, self._pending = self._pending, None
        if line is not None:
            self.say(line)

    def say(self, message: str, prefix: str = "") -> None:
        """Print `message` (each line after `prefix`) above the bar."""
        text = "\n".join(prefix + line for line in message.splitlines())
        if self._tqdm is not None:
            self._tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """End the bar, or print the last plain line if it is not out yet (messages
        after this print plainly)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self._print_pending()


def run_summary(
    state: str,
    elapsed_s: float,
    records: list[dict[str, Any]],
    steps: int,
    stats: dict[str, Any] | None,
    restart_steps: Sequence[int],
    evals: Sequence[dict[str, Any]] = (),
    evaluated: str = "held-out images",
) -> list[str]:
    """The lines printed at the end: how the loss went, the validation scores (over
    `evaluated`: the held-out split, or the images of an --eval-source), how well the
    service packed."""
    lines = [f"{state} after {elapsed_s:.0f} s"]
    if records:
        first = records[: min(10, len(records))]
        last = records[-min(10, len(records)) :]

        def mean(some: list[dict[str, Any]], key: str) -> float:
            return sum(r[key] for r in some) / len(some)

        lines.append(
            f"step {records[-1]['step']}/{steps}: "
            f"loss {mean(first, 'loss'):.3f} -> {mean(last, 'loss'):.3f} "
            f"(mean of first/last {len(last)} steps), "
            f"accuracy {mean(first, 'accuracy'):.2f} -> {mean(last, 'accuracy'):.2f}"
        )
    if evals:
        first, last = evals[0], evals[-1]
        lines.append(
            f"validation ({last['eval_images']} {evaluated}): "
            f"loss {first['eval_loss']:.3f} -> {last['eval_loss']:.3f}, "
            f"accuracy {first['eval_accuracy']:.2f} -> {last['eval_accuracy']:.2f} "
            f"(steps {first['step']} -> {last['step']})"
        )
    if stats is not None:
        run = stats["throughput"]["run"]
        rejected = sum(stats.get("rejected_by_reason", {}).values())
        lines.append(
            f"packing efficiency {100 * stats['packing_efficiency']:.1f}% (real tokens / "
            "tokens of the sequences that hold images), delivered efficiency "
            f"{100 * stats['delivered_efficiency']:.1f}% (real / every token sent), "
            f"{run['images']} images delivered at {run['images_per_s']:.0f} img/s, "
            f"{rejected} rejected, config version {stats['config_version']}"
        )
    if restart_steps:
        lines.append(
            f"trainers restarted {len(restart_steps)} time(s), from steps {list(restart_steps)}"
        )
    return lines
