"""GET /metrics: the job's numbers in the Prometheus exposition format."""

from __future__ import annotations


def test_metrics_expose_the_job(api):
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert "navit_packing_efficiency" in metrics.text
    assert "navit_config_version 1.0" in metrics.text
