"""GET /healthz and /readyz: live at once, ready once the index is loaded and Ray is up."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.main import create_app


def test_ready_once_the_job_and_ray_are_up(api, ray_session):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_readyz_says_what_is_missing_while_starting():
    with TestClient(create_app(job=None)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "the index is loading" in response.json()["reasons"]
        assert client.get("/stats").status_code == 503
