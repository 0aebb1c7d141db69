"""Fuzz every control-plane operation from its OpenAPI schema (schemathesis).

No input may produce a 5xx; every refusal is a documented 4xx with a reason; responses
match their declared schemas, status codes, content types and headers.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks as st

from service.api.main import create_app
from service.job import ServiceJob
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG

# The schema does not depend on the job, so the app is built at import (schemathesis
# parametrizes from it) and the job is attached by a fixture. (`from_fixture` does not
# work with pytest 9.)
TOKEN = "fuzz-token"
APP = create_app(job=None, token=TOKEN)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.auth()
class BearerAuth:
    """Mutations need the token; give every generated request the right one."""

    def get(self, case, ctx) -> str:
        return TOKEN

    def set(self, case, data, ctx) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@pytest.fixture(autouse=True)
def attached_job(sample_index, ray_session):
    APP.state.job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), dataset="sample")
    yield
    APP.state.job = None


def errors_have_a_reason(ctx, response, case) -> None:
    """Every 4xx says why: a JSON body with a non-empty `detail`."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert body.get("detail"), f"{response.status_code} without a reason: {body}"


CHECKS = [
    st.not_a_server_error,
    st.status_code_conformance,
    st.content_type_conformance,
    st.response_headers_conformance,
    st.response_schema_conformance,
    st.negative_data_rejection,
    errors_have_a_reason,
]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_openapi_fuzz(case):
    case.call_and_validate(checks=CHECKS)


def test_the_fuzzed_app_still_serves(sample_index):
    job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), dataset="sample")
    with TestClient(create_app(job, token=TOKEN)) as client:
        assert client.get("/config").status_code == 200
        assert client.patch("/config", json={"pack_window": 8}).status_code == 401
