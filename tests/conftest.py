"""Shared pytest setup for all test packages."""

import pytest


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
