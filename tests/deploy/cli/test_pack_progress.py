"""The live line of `navit pack` (drawn only on a terminal) and its summary."""

from __future__ import annotations

import io
from dataclasses import dataclass

from deploy.cli.pack_progress import (
    PLAIN_LINE_INTERVAL_S,
    PackProgress,
    rejected_lines,
    summary_lines,
)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")


@dataclass
class SoFar:
    images_in: int
    packing_efficiency: float


def test_on_a_terminal_the_live_line_shows_images_rate_efficiency_and_eta() -> None:
    terminal = FakeTerminal()
    progress = PackProgress(200, stream=terminal)
    progress.update(SoFar(50, 0.9812))
    progress.update(SoFar(120, 0.9876))
    progress.close()
    last = terminal.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("pack: 120/200 images  60%")
    assert "images/s" in last
    assert "packing 98.76%" in last
    assert "ETA " in last and "ETA ?" not in last


def test_disabled_nothing_is_drawn() -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        progress = PackProgress(200, stream=stream, enabled=False)
        progress.update(SoFar(120, 0.98))
        progress.close()
        assert stream.getvalue() == ""
        assert not progress.live


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_plain_line_every_10_s_and_no_carriage_return() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = PackProgress(200, stream=stream, clock=clock)
    assert not progress.live
    progress.update(SoFar(50, 0.9812))
    assert stream.getvalue() == ""  # not 10 s yet
    clock.now += PLAIN_LINE_INTERVAL_S
    progress.update(SoFar(120, 0.9876))
    clock.now += 1.0
    progress.update(SoFar(130, 0.9876))
    clock.now += PLAIN_LINE_INTERVAL_S
    progress.update(SoFar(200, 0.99))
    progress.close()
    assert stream.getvalue().splitlines() == [
        "pack: 120/200 images (60%), 12.0 images/s, packing 98.76%",
        "pack: 200/200 images (100%), 9.5 images/s, packing 99.00%",
    ]


def _stats(**values: object) -> dict:
    stats = {
        "images_in": 713,
        "images_packed": 713,
        "images_rejected": 0,
        "rejected_by_reason": {},
        "batches": 12,
        "sequences": 90,
        "images_per_sequence_mean": 7.9,
        "tokens_per_image_mean": 128.0,
        "real_tokens": 91264,
        "pad_tokens": 896,
        "filler_sequences": 0,
        "packing_efficiency": 0.990278,
        "delivered_efficiency": 0.990278,
        "notes": {},
        "skipped_by_extension": {},
        "images_per_s": 350.0,
        "tokens_per_s": 44800.0,
    }
    return {**stats, **values}


def test_the_pack_summary_sets_the_prediction_beside_the_delivery() -> None:
    predicted = _stats(packing_efficiency=0.9968)
    delivered = _stats(
        images_packed=693,
        images_rejected=20,
        rejected_by_reason={"truncated": 20},
        packing_efficiency=0.9748,
        delivered_efficiency=0.9748,
        skipped_by_extension={".tar": 1, ".txt": 3},
        notes={"corrupt_metadata": 2},
    )
    lines = summary_lines("packed into out (1 epoch)", delivered, predicted)
    assert lines[0] == "packed into out (1 epoch):"
    assert "  images: 713 in, 693 packed, 20 rejected (truncated 20; see rejected.jsonl)" in lines
    assert (
        "  predicted: 713 packed at 99.68% packing efficiency; delivered: 693 packed at 97.48%"
    ) in lines
    assert any(line.startswith("  delivered efficiency: 97.48%") for line in lines)
    assert any("remembered" in line for line in lines)  # why they differ, and that it heals
    assert "  skipped (not images): .tar 1, .txt 3" in lines
    assert (
        "  notes (Pillow's warnings and decoder messages, see notes.jsonl): corrupt_metadata 2"
        in lines
    )


def test_the_simulate_summary_shows_skipped_files_and_known_decode_failures() -> None:
    stats = _stats(
        images_packed=712,
        images_rejected=1,
        rejected_by_reason={"truncated": 1},
        skipped_by_extension={".txt": 1},
    )
    lines = summary_lines("simulated", stats, known_failures=1)
    assert "  images: 713 in, 712 packed, 1 rejected (truncated 1)" in lines
    assert "  known decode failures: 1 (found by an earlier pack, left out)" in lines
    assert "  skipped (not images): .txt 1" in lines
    assert not any(line.startswith("  predicted") for line in lines)


def test_the_simulate_list_names_each_image_left_out_with_its_reason_on_one_line() -> None:
    rejects = [
        ("b/truncated.jpg", "truncated", "OSError: image file is truncated\n(2 bytes)"),
        ("a/empty.png", "empty", ""),
    ]
    assert rejected_lines(rejects) == [
        "rejected images (reason: detail):",
        "  a/empty.png  empty",
        "  b/truncated.jpg  truncated: OSError: image file is truncated (2 bytes)",
    ]
    assert rejected_lines([]) == []
