"""POST /simulate: a proposed config's stats on a sample, the running job untouched."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.job import ServiceJob
from service.settings import ServiceSettings
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG


def test_simulate_predicts_without_touching_the_job(api):
    response = api.post("/simulate", json={"config": {"max_images_per_seq": 1}, "sample_size": 40})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sample_size"] == 40
    assert body["stats"]["images_packed"] == 40
    assert body["stats"]["images_per_sequence_hist"] == {"1": 40}
    assert body["stats"]["packing_efficiency"] < body["baseline"]["packing_efficiency"]
    # Simulate may try a seq_len the live job could not switch to.
    assert api.post("/simulate", json={"config": {"seq_len": 256}}).status_code == 200
    assert api.get("/config").json()["version"] == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"config": {"max_res": 8}}, ["body", "config", "max_res"]),
        ({"config": {"seq_len": -1}}, ["body", "config", "seq_len"]),
        ({"sample_size": 10**6}, ["body", "sample_size"]),
        ({"sample_size": 0}, ["body", "sample_size"]),
        ({"config": {"nope": 1}}, ["body", "config", "nope"]),
    ],
)
def test_simulate_bad_input_is_a_422_naming_the_field(api, body, loc):
    response = api.post("/simulate", json=body)
    assert response.status_code == 422, response.text
    assert any(error["loc"] == loc for error in response.json()["detail"])


def test_what_one_simulate_may_cost_is_bounded_naming_the_field(sample_index):
    settings = ServiceSettings(simulate_max_images=60)
    job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), settings=settings)
    with TestClient(create_app(job)) as client:
        assert client.post("/simulate", json={"sample_size": 30, "epochs": 2}).status_code == 200
        response = client.post("/simulate", json={"sample_size": 40, "epochs": 2})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "epochs"]
        assert "simulate_max_images" in error["msg"] and "60" in error["msg"]
