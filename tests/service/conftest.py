"""Fixtures of the service tests: a small sample dataset, its index, and started services.

Every service starts on 127.0.0.1 with free ports inside the session's one local Ray
(the `ray_session` fixture of tests/conftest.py) and is stopped by the fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from service.serve import ServiceHandle, start_service
from tests.service.service_testkit import SMALL_CONFIG


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from packer.sample_data import write_sample_dataset

    folder = tmp_path_factory.mktemp("service-data") / "images"
    write_sample_dataset(folder, 48, seed=3)
    return folder


@pytest.fixture(scope="session")
def index_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-index-cache")


@pytest.fixture(scope="session")
def sample_index(sample_dataset: Path, index_cache_dir: Path) -> pa.Table:
    from packer.index.cache import load_index

    return load_index(str(sample_dataset), cache_dir=index_cache_dir)


@pytest.fixture
def start(
    ray_session: None,
    sample_dataset: Path,
    index_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., ServiceHandle]]:
    """start(**settings) -> a running service on the sample data; stopped at teardown."""
    for name in ("NAVIT_TOKEN", "NAVIT_TOKEN_FILE", "NAVIT_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    handles: list[ServiceHandle] = []

    def _start(**values: object) -> ServiceHandle:
        values.setdefault("config", SMALL_CONFIG)
        values.setdefault("dataset", str(sample_dataset))
        values.setdefault("index_cache_dir", index_cache_dir)
        values.setdefault("host", "127.0.0.1")
        values.setdefault("api_port", 0)
        values.setdefault("flight_port", 0)
        values.setdefault("log_level", "warning")
        handle = start_service(**values)
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        handle.stop()
