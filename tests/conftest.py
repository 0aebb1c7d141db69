"""Shared pytest setup for all test packages."""

import sys
from pathlib import Path

# Test helper modules (e.g. tests/packer/image_cases.py) are imported by plain name from
# any test directory; there are no __init__.py files, so put their folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent / "packer"))
sys.path.insert(0, str(Path(__file__).parent))  # tests/processes.py

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray (2 CPUs) shared by every test of the session."""
    import ray

    from packer.pipeline import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _index_cache_in_tmp(tmp_path_factory):
    """Keep header-index caches out of the user's ~/.cache during tests."""
    import os

    os.environ["NAVIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("navit-cache"))
    yield
