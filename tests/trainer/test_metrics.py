"""metrics.jsonl: a fresh run replaces it, a resumed one keeps lines up to its checkpoint."""

from __future__ import annotations

import json

import numpy as np

from packer.contract.cursor import Cursor
from tests.trainer.trainer_synthetic import make_batch
from trainer.metrics import MetricsLog, step_record, throughput


def write_steps(log: MetricsLog, steps: range) -> None:
    for step in steps:
        log.write({"step": step, "loss": float(step)})
    log.close()


def steps_in(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resumed_log_drops_lines_after_the_checkpoint_and_fresh_log_replaces(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_steps(MetricsLog(path, None), range(1, 8))
    resumed = MetricsLog(path, resume_step=4)
    write_steps(resumed, range(5, 10))
    assert steps_in(path) == list(range(1, 10))
    assert [r["step"] for r in resumed.records] == list(range(5, 10))  # this run's only
    write_steps(MetricsLog(path, None), range(1, 3))
    assert steps_in(path) == [1, 2]


def test_log_without_a_path_keeps_records_in_memory_only(tmp_path):
    log = MetricsLog(None, None)
    write_steps(log, range(1, 3))
    assert [r["step"] for r in log.records] == [1, 2] and not list(tmp_path.iterdir())


def test_step_record_counts_labelled_images_and_real_tokens():
    batch = make_batch([[(2, 3), (1, 4)], [(3, 3)]], seq_len=16, labels=[0, -1, 2])
    record = step_record(7, Cursor(0, 1, 2, 5), batch, 0.5, 1, 1e-3)
    assert record["step"] == 7 and (record["epoch"], record["next_batch"]) == (2, 5)
    assert record["accuracy"] == 0.5 and record["images"] == 3  # 1 of 2 labelled right
    speed = throughput(batch, step_s=2.0, data_wait_s=0.5)
    assert speed["tokens_per_s"] == (6 + 4 + 9) / 2.0
    assert np.isclose(speed["pad_fraction"], (32 - 19) / 32)
    assert speed["images_per_s"] == 1.5 and speed["data_wait_s"] == 0.5
