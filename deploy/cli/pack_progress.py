"""What `navit pack` shows: a live line while it works (on a terminal), then a summary.

The live line (tqdm, on stderr) counts images against what `navit simulate` predicted,
with images/s, the packing efficiency so far and the ETA:

    pack: 412/713 images  58%|█████▊    | 95.1 images/s, packing 99.21%, ETA 00:03

Off a terminal (a log file, a pipe, CI), where a redrawn line's carriage returns would
pile up, the same figures come as a plain line every 10 s:

    pack: 412/713 images (58%), 95.1 images/s, packing 99.21%

Either way (and with --no-progress, which hides both) the pack ends with the summary,
which sets the prediction beside what was delivered and says what was rejected, skipped
and noted, e.g.

    packed into runs/packed (1 epoch):
      images: 713 in, 693 packed, 20 rejected (truncated 20; see rejected.jsonl)
      predicted: 713 packed at 99.68% packing efficiency; delivered: 693 packed at 97.48%
      ...
      skipped (not images): .txt 3, .tar 1
      notes (Pillow's warnings and decoder messages, see notes.jsonl): corrupt_metadata 1
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TextIO

from tqdm import tqdm

from trainer.progress import PLAIN_LINE_INTERVAL_S, is_terminal

_BAR_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} images {percentage:3.0f}%|{bar:10}| "
    "{rate_fmt}{postfix}, ETA {remaining}"
)


class StatsSoFar(Protocol):
    """What the live line reads of the running stats (packer.plan.stats.PackingStats)."""

    images_in: int

    @property
    def packing_efficiency(self) -> float: ...


class PackProgress:
    """The progress of one pack: `update(stats)` after each batch, `close()` at the end.

    When `enabled`: the live line where `stream` is a terminal, else a plain line every
    PLAIN_LINE_INTERVAL_S seconds (`clock` says when); nothing when not `enabled`.
    """

    def __init__(
        self,
        total_images: int,
        stream: TextIO | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        stream = sys.stderr if stream is None else stream
        self.live = enabled and is_terminal(stream)
        self.plain = enabled and not self.live
        self._stream = stream
        self._total = max(total_images, 1)
        self._clock = clock
        self._started = self._last_plain = clock()
        columns, lines = _terminal_size(stream)
        self._bar = tqdm(
            total=max(total_images, 1),
            desc="pack",
            unit=" images",
            file=stream,
            disable=not self.live,
            bar_format=_BAR_FORMAT,
            ncols=columns,
            nrows=lines,
            mininterval=0.2,
            postfix="packing -",
        )

    def update(self, stats: StatsSoFar) -> None:
        if self.plain:
            self._plain_line(stats)
        if not self.live:
            return
        self._bar.set_postfix_str(f"packing {100 * stats.packing_efficiency:.2f}%", refresh=False)
        self._bar.update(stats.images_in - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def _plain_line(self, stats: StatsSoFar) -> None:
        now = self._clock()
        if now - self._last_plain < PLAIN_LINE_INTERVAL_S:
            return
        self._last_plain = now
        done = stats.images_in
        rate = done / max(now - self._started, 1e-9)
        print(
            f"pack: {done}/{self._total} images ({100 * done / self._total:.0f}%), "
            f"{rate:.1f} images/s, packing {100 * stats.packing_efficiency:.2f}%",
            file=self._stream,
            flush=True,
        )


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal; 100 x 24 where it says 0 (a pty that `script`
    opens without a terminal around it), which tqdm would take as "no room: draw nothing"."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 100, 24
    return size.columns or 100, size.lines or 24


def _counts(counts: dict[str, int]) -> str:
    """{"truncated": 20, "empty": 1} -> "empty 1, truncated 20"."""
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))


def summary_lines(
    title: str,
    stats: dict[str, Any],
    predicted: dict[str, Any] | None = None,
    known_failures: int = 0,
) -> list[str]:
    """The summary of a pack (`predicted`: simulate's stats) or of a simulate (None)."""
    rejected = stats["rejected_by_reason"]
    where = "; see rejected.jsonl" if predicted is not None else ""
    rejected_text = f" ({_counts(rejected)}{where})" if rejected else ""
    lines = [
        f"{title}:",
        f"  images: {stats['images_in']} in, {stats['images_packed']} packed, "
        f"{stats['images_rejected']} rejected{rejected_text}",
    ]
    if predicted is not None:
        lines.append(
            f"  predicted: {predicted['images_packed']} packed at "
            f"{100 * predicted['packing_efficiency']:.2f}% packing efficiency; delivered: "
            f"{stats['images_packed']} packed at {100 * stats['packing_efficiency']:.2f}%"
        )
        if predicted["images_packed"] != stats["images_packed"]:
            lines.append(
                "  (images whose pixels did not decode are remembered: the next simulate "
                "and pack leave them out)"
            )
    if known_failures:
        lines.append(
            f"  known decode failures: {known_failures} (found by an earlier pack, left out)"
        )
    lines += [
        f"  sequences: {stats['sequences']} in {stats['batches']} batches, "
        f"{stats['images_per_sequence_mean']} images and "
        f"{stats['tokens_per_image_mean']} tokens per image on average",
        f"  packing efficiency: {100 * stats['packing_efficiency']:.2f}% "
        f"({stats['real_tokens']} real / {stats['pad_tokens']} pad tokens in the sequences "
        "that hold images)",
        f"  delivered efficiency: {100 * stats['delivered_efficiency']:.2f}% "
        f"(real / every token, {stats['filler_sequences']} filler sequences included)",
    ]
    if predicted is not None and stats.get("images_per_s"):
        lines.append(
            f"  throughput: {stats['images_per_s']} images/s, {stats['tokens_per_s']} tokens/s"
        )
    if stats.get("skipped_by_extension"):
        lines.append(f"  skipped (not images): {_counts(stats['skipped_by_extension'])}")
    if stats.get("notes"):
        lines.append(
            "  notes (Pillow's warnings and decoder messages, see notes.jsonl): "
            + _counts(stats["notes"])
        )
    return lines


def rejected_lines(rejects: Iterable[tuple[str, str, str]]) -> list[str]:
    """What `navit simulate` lists after its summary: every image it leaves out, one
    line each, sorted by image id: [("bad/x.png", "empty", "no bytes")] ->
    ["rejected images (reason: detail):", "  bad/x.png  empty: no bytes"]."""
    rows = sorted(rejects)
    if not rows:
        return []
    lines = ["rejected images (reason: detail):"]
    for image_id, reason, detail in rows:
        detail = " ".join(detail.split())  # one line, whatever the decoder wrote
        lines.append(f"  {image_id}  {reason}: {detail}" if detail else f"  {image_id}  {reason}")
    return lines
