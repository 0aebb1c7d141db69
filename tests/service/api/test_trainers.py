"""POST /trainers/{rank}/report: trainer reports, and the starved ones, in /stats."""

from __future__ import annotations

import pytest


def test_trainer_reports_show_in_stats(api):
    ok = api.post("/trainers/0/report", json={"step": 10, "step_time_s": 0.5, "data_wait_s": 0.01})
    starved = api.post(
        "/trainers/1/report", json={"step": 10, "step_time_s": 0.5, "data_wait_s": 0.3}
    )
    assert ok.status_code == starved.status_code == 200
    stats = api.get("/stats").json()
    by_rank = {t["rank"]: t for t in stats["trainers"]}
    assert by_rank[0]["starved"] is False
    assert by_rank[1]["starved"] is True
    assert by_rank[1]["data_wait_fraction"] == pytest.approx(0.6)
    assert stats["trainers_starved"] == 1
    bad = api.post("/trainers/0/report", json={"step": -1, "step_time_s": 1, "data_wait_s": 0})
    assert bad.status_code == 422


def test_the_http_report_takes_the_fields_of_the_flight_report():
    from dataclasses import fields

    from packer.contract.report import StepReport
    from service.api.schemas import TrainerReport

    assert set(TrainerReport.model_fields) == {f.name for f in fields(StepReport)} - {"rank"}
