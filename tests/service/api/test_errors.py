"""Refusals say why without echoing: NaN and Infinity in float fields are a 422 naming the
field (never a 500), and a 422 never sends a huge input back."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.api.errors import BODY_PREVIEW_CHARS, PREVIEW_CHARS, body_start, preview
from service.api.main import create_app
from service.job import ServiceJob
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG

# (method, path, body with the float field as {value}, the field's loc)
FLOAT_FIELDS = [
    ("PATCH", "/config", '{"res_sigma": %s}', ["body", "res_sigma"]),
    (
        "POST",
        "/simulate",
        '{"config": {"res_mu": %s}, "sample_size": 8}',
        ["body", "config", "res_mu"],
    ),
    (
        "POST",
        "/trainers/0/report",
        '{"step": 1, "step_time_s": %s, "data_wait_s": 0.0}',
        ["body", "step_time_s"],
    ),
]


@pytest.fixture
def roomy(sample_index) -> TestClient:
    """The app with room for a 2 MB body, so that it reaches validation."""
    job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), dataset="sample")
    with TestClient(create_app(job, max_body_bytes=8 << 20)) as client:
        yield client


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(("method", "path", "body", "loc"), FLOAT_FIELDS)
def test_non_finite_floats_are_a_422_naming_the_field(api, token, method, path, body, loc):
    response = api.request(
        method, path, content=body % token, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][: len(loc)] == loc for e in errors), errors
    assert api.get("/config").json()["version"] == 1


@pytest.mark.parametrize(("method", "path", "body", "loc"), FLOAT_FIELDS)
def test_a_422_never_echoes_a_huge_input(roomy, method, path, body, loc):
    huge = json.dumps("x" * (2 << 20))
    response = roomy.request(
        method, path, content=body % huge, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert len(response.content) < 2000
    errors = response.json()["detail"]
    assert any(e["loc"][: len(loc)] == loc for e in errors), errors
    assert all(len(str(e.get("input", ""))) <= PREVIEW_CHARS + 3 for e in errors)


def test_a_huge_unknown_field_name_is_not_echoed_either(roomy):
    name = "k" * (1 << 20)
    response = roomy.patch("/config", json={name: 1})
    assert response.status_code == 422
    assert len(response.content) < 2000
    (error,) = response.json()["detail"]
    assert error["loc"][0] == "body" and error["loc"][1].startswith("kkk")


def test_preview_keeps_small_values_and_cuts_the_rest():
    assert preview(5) == 5
    assert preview(0.5) == 0.5
    assert preview(None) is None
    assert preview(float("nan")) == "nan"
    assert preview("x" * 1000) == "x" * PREVIEW_CHARS + "..."
    assert preview({"a": [1] * 1000}).endswith("...")


def test_a_body_that_is_not_json_is_a_422_showing_the_start_of_what_arrived(api):
    response = api.patch(
        "/config", content=b"max_images_per_seq=4", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["input"] == "max_images_per_seq=4"
    assert error["msg"] == "body is not JSON: Expecting value at character 0"
    assert api.get("/config").json()["version"] == 1


def test_the_start_of_a_long_or_odd_body_is_bounded_and_escaped(roomy):
    body = b"{\n\x00\x1b[31m" + b"z" * (1 << 20)
    response = roomy.post("/simulate", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert len(response.content) < 2000
    (error,) = response.json()["detail"]
    assert error["input"].startswith("{\\n\\x00\\x1b[31mzzz")
    assert error["input"].endswith("...") and len(error["input"]) <= BODY_PREVIEW_CHARS + 20
    assert body_start("x" * BODY_PREVIEW_CHARS) == "x" * BODY_PREVIEW_CHARS


def test_a_binary_body_is_shown_as_the_bytes_received(api):
    # json would read a leading FF FE as UTF-16 and show other characters entirely.
    response = api.patch(
        "/config", content=b"\xff\xfe garbage", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["input"] == "\\xff\\xfe garbage"
