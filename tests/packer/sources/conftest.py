"""Fixtures shared by the sources tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from packer.sample_data import write_sample_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An ImageFolder of 12 sample images in four classes."""
    root = tmp_path_factory.mktemp("folder")
    write_sample_dataset(root, 12, seed=3)
    return root
