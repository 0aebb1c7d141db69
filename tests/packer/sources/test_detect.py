"""open_source: which kind a location holds, and a clear error when it holds none or many."""

from __future__ import annotations

import pytest

from packer.sources import open_source
from tests.packer import image_cases as cases


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no images"),
        ({"readme.txt": b"hi"}, "holds no images"),
        ({"a.tar": b"", "b.parquet": b""}, "mixes kinds"),
    ],
)
def test_unknown_or_empty_sources_raise_a_clear_value_error(tmp_path, layout, message):
    for name, data in layout.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        open_source(str(tmp_path))


def test_missing_source_and_single_image_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "one.jpg").write_bytes(cases.photo_jpeg())
    with pytest.raises(ValueError, match="single image"):
        open_source(str(tmp_path / "one.jpg"))
