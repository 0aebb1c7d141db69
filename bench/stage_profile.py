"""Where a run's CPU goes, stage by stage: py-spy samples of the driver and the workers,
scaled to each process's CPU time from /proc (bench/cpu_use.py).

    with StageProfile(pids_by_role) as profile:   # py-spy on each pid, not pausing it
        run()
    profile.ms_per_image(spent, images)   # {"workers": {"decode": 0.91, ...}, "driver": ...}

A sample is charged to the stage of its deepest frame that names one (`STAGES`): a
decode under `stderr_as_notes` is "notes" while the redirect is being set up and
"decode" once libjpeg-turbo runs. Frames no stage names are "framework" (Ray, torch's
DataLoader, multiprocessing: task hand-over, block conversions, the loop between
tasks). Each process's non-idle samples are shares of the CPU /proc says it used, so
the stages of a role add up to that role's CPU; py-spy itself runs apart and is not
counted. Threads py-spy sees waiting (a lock, a socket, a condition) are left out.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

# (stage, needles): a frame "func (path/file.py:line)" belongs to the first stage with
# a needle in it. Checked from the leaf frame up, so the innermost match wins.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("notes", ("packer/image/notes.py", "packer/image/stderr_notes.py")),
    ("read", ("ByteReader.", "Path.read_bytes")),
    ("header", ("imageio.py:_open", "_open (packer/image/imageio.py", "_orientation", "formats")),
    ("decode", ("_decode_jpeg_scaled", "_decode_with_pillow", "simplejpeg")),
    ("resize", ("resize_pixels", "orient_pixels", "cv2")),
    ("patchify", ("patchify",)),
    ("arrow", ("to_record_batch", "packer/contract/schema.py")),
    ("write", ("write_batch_file", "write_atomically", "write_ipc_file", "packer/contract/files")),
    ("stats", ("packer/plan/stats.py",)),
    ("layout", ("fill_batch", "pack_images", "packed_batch", "_PackingCollate", "kept_tok")),
    ("plan", ("packer/plan/", "packer/index/")),
    ("pickle", ("pickle", "serialization.py", "ForkingPickler", "reduction.py")),
    ("pack_logs", ("_PackLogs", "json/")),
)
FRAMEWORK = "framework"
# Leaf frames of a thread that waits: py-spy reports some waiting threads as active.
_WAITING = ("wait (", "Condition.wait", "Event.wait", "select (", "_recv", "poll (", "sleep")


def stage_of(frames: list[str]) -> str:
    """The stage of one sample, its frames root first."""
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return FRAMEWORK


def is_waiting(frames: list[str]) -> bool:
    return bool(frames) and any(mark in frames[-1] for mark in _WAITING)


def count_stages(
    raw: str, framework_leaves: collections.Counter[str] | None = None
) -> collections.Counter[str]:
    """Samples per stage of py-spy's raw output (one "frame;frame;... count" a line);
    the leaf frames of "framework" samples are counted in `framework_leaves` if given."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        if is_waiting(frames):
            continue
        stage = stage_of(frames)
        counts[stage] += int(number)
        if stage == FRAMEWORK and framework_leaves is not None:
            framework_leaves[frames[-1]] += int(number)
    return counts


class StageProfile:
    """py-spy (`--nonblocking`, `rate` Hz) on each pid of each role while the block runs."""

    def __init__(self, pids_by_role: dict[str, list[int]], rate: int = 97) -> None:
        self.pids_by_role = pids_by_role
        self.rate = rate
        self._folder = Path(tempfile.mkdtemp(prefix="stage-profile-"))
        self._spies: list[tuple[str, int, subprocess.Popen, Path]] = []
        self.samples: dict[str, collections.Counter[str]] = {}
        # What "framework" was, per role: its most frequent leaf frames.
        self.framework_leaves: dict[str, collections.Counter[str]] = {}

    def __enter__(self) -> StageProfile:
        py_spy = shutil.which("py-spy") or str(Path(_venv_bin()) / "py-spy")
        for role, pids in self.pids_by_role.items():
            for pid in pids:
                output = self._folder / f"{role}-{pid}.txt"
                command = [py_spy, "record", "--pid", str(pid), "--rate", str(self.rate)]
                command += ["--nonblocking", "--format", "raw", "--output", str(output)]
                spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                self._spies.append((role, pid, spy, output))
        return self

    def __exit__(self, *exc: object) -> None:
        for _, _, spy, _ in self._spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for role, _pid, spy, output in self._spies:
            spy.wait(timeout=60)
            raw = output.read_text() if output.exists() else ""
            leaves = self.framework_leaves.setdefault(role, collections.Counter())
            self.samples.setdefault(role, collections.Counter()).update(count_stages(raw, leaves))
        shutil.rmtree(self._folder, ignore_errors=True)

    def ms_per_image(self, spent: dict[str, float], images: int) -> dict[str, dict[str, float]]:
        """Each role's CPU (`spent`, seconds) split by its stages' sample shares, in ms
        per image; a role py-spy saw no sample of keeps its total under "framework"."""
        result = {}
        for role, counts in self.samples.items():
            total = sum(counts.values())
            cpu_ms = 1e3 * spent.get(role, 0.0) / images
            if not total:
                result[role] = {FRAMEWORK: round(cpu_ms, 3)}
                continue
            shares = {stage: cpu_ms * n / total for stage, n in counts.most_common()}
            result[role] = {stage: round(ms, 3) for stage, ms in shares.items()}
        return result


def _venv_bin() -> str:
    import sys

    return str(Path(sys.executable).parent)
