"""A trainer rank's step report (packer/contract/report.py)."""

from __future__ import annotations

import pytest

from packer.contract.report import StepReport


def test_a_report_round_trips_through_its_action_body():
    report = StepReport(rank=1, step=120, step_time_s=0.21, data_wait_s=0.01, world_size=2)
    assert StepReport.from_bytes(report.to_bytes()) == report
    assert b"loss" not in report.to_bytes()  # unset fields are left out


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"rank": 0, "step": 1, "step_time_s": -1, "data_wait_s": 0}', "step_time_s"),
        (b'{"rank": 0, "step": 1.5, "step_time_s": 1, "data_wait_s": 0}', "step"),
        (b'{"rank": 2, "step": 1, "step_time_s": 1, "data_wait_s": 0, "world_size": 2}', "rank"),
        (b'{"rank": 0, "step": 1, "step_time_s": 1}', "data_wait_s"),
        (b'{"rank": 0, "steps": 1}', "steps"),
        (b"[1]", "report"),
    ],
)
def test_a_bad_report_names_the_field(body, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        StepReport.from_bytes(body)
