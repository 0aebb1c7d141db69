"""Trainer reports (service/job/trainer_reports.py): who waits for data."""

from __future__ import annotations

from service.job.trainer_reports import TrainerReports


def test_a_trainer_waiting_a_fifth_of_its_step_is_starved():
    reports = TrainerReports()
    ok = reports.add(0, {"step": 1, "step_time_s": 0.5, "data_wait_s": 0.1}, now=100.0)
    starved = reports.add(1, {"step": 1, "step_time_s": 0.5, "data_wait_s": 0.3}, now=101.0)
    idle = reports.add(2, {"step": 0, "step_time_s": 0.0, "data_wait_s": 1.0}, now=102.0)
    assert (ok["data_wait_fraction"], ok["starved"]) == (0.2, False)
    assert (starved["data_wait_fraction"], starved["starved"]) == (0.6, True)
    assert idle["data_wait_fraction"] == 0.0
    entries = reports.entries(now=110.0)
    assert [e["rank"] for e in entries] == [0, 1, 2]
    assert [e["age_s"] for e in entries] == [10.0, 9.0, 8.0]
    assert all("received_at" not in e for e in entries)
