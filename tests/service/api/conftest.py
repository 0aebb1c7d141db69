"""The `api` fixture: the control-plane app around a job on the sample index."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.job import ServiceJob
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG


@pytest.fixture
def api(sample_index) -> TestClient:
    """The app around a job on the sample index; no Ray needed until a stream starts."""
    job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), dataset="sample")
    with TestClient(create_app(job)) as client:
        yield client
