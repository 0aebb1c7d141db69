"""Fixtures of the launch-layer tests."""

from __future__ import annotations

import pytest

from tests.deploy.sample_model import SampleModel, train_sample_model


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    """A tiny NaViT trained on sample images, with its held-out split (sample_model.py)."""
    return train_sample_model(tmp_path_factory.mktemp("sample-model"))
