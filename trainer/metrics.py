"""The metrics log: `metrics.jsonl`, one JSON object per logged step or evaluation.

A step line, e.g. step 12 having trained rank 0's batch 3 of epoch 1:

    {"step": 12, "epoch": 1, "next_batch": 4, "loss": 1.27, "accuracy": 0.5, "lr": 0.001,
     "images": 48, "config_version": 2, "images_per_s": ..., "tokens_per_s": ...,
     "pad_fraction": ..., "data_wait_s": ..., "step_s": ...}

(`epoch` and `next_batch` are the data cursor after the step: where a run resumed from
this step continues.) An evaluation line has "eval": true (see trainer/evaluate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packer.contract.cursor import Cursor
from packer.contract.schema import PackedBatch


class MetricsLog:
    """metrics.jsonl plus the records of this run in memory.

    A fresh run replaces the file. A resumed run keeps the lines up to the checkpoint's
    step and appends after them: lines a crashed run wrote after its last checkpoint are
    dropped, because the resumed run computes those steps again.
    """

    def __init__(self, path: Path | None, resume_step: int | None) -> None:
        self.records: list[dict[str, Any]] = []
        self.handle = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= resume_step:
                    kept.append(line + "\n")
        self.handle = open(path, "w")  # noqa: SIM115 closed in close()
        self.handle.writelines(kept)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def step_record(
    step: int, cursor: Cursor, batch: PackedBatch, loss: float, correct: int, lr: float
) -> dict[str, Any]:
    """What a step did: loss, accuracy over its labelled images, LR, where the data stands."""
    labelled = int((batch.labels >= 0).sum())
    return {
        "step": step,
        "epoch": cursor.epoch,
        "next_batch": cursor.next_batch,
        "loss": loss,
        "accuracy": correct / labelled if labelled else 0.0,
        "lr": lr,
        "images": batch.num_images,
        "config_version": batch.config_version,
    }


def throughput(batch: PackedBatch, step_s: float, data_wait_s: float) -> dict[str, float]:
    """How fast a step ran: images and real (non-padding) tokens per second, data wait."""
    total = batch.segment_ids.size
    return {
        "images_per_s": batch.num_images / step_s,
        "tokens_per_s": batch.real_tokens / step_s,
        "pad_fraction": batch.pad_tokens / total if total else 0.0,
        "data_wait_s": data_wait_s,
        "step_s": step_s,
    }
