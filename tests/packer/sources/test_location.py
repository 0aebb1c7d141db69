"""Locations: one spelling per source, URIs of listed paths, listing fingerprints."""

from __future__ import annotations

import pyarrow.fs as pafs

from packer.sample_data import write_sample_dataset
from packer.sources import normalize_uri, open_source
from packer.sources.location import Location
from tests.packer import image_cases as cases


def test_file_uri_and_relative_path_name_the_same_source(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    assert normalize_uri(folder.name) == str(folder)
    assert normalize_uri(f"file://{folder}") == str(folder)
    assert open_source(f"file://{folder}").uri == str(folder)


def test_a_listed_bucket_path_is_spelled_as_a_uri_with_the_roots_options():
    # A bucket filesystem lists "bucket/key" paths; the query carries the root's options.
    root = Location("s3://bucket/data?region=eu-west-1", pafs.LocalFileSystem(), "bucket/data")
    assert root.uri_of("bucket/data/cat/1.jpg") == "s3://bucket/data/cat/1.jpg?region=eu-west-1"
    assert root.relative("bucket/data/cat/1.jpg") == "cat/1.jpg"
    assert not root.is_local


def test_fingerprint_changes_when_a_file_changes_and_not_otherwise(tmp_path):
    write_sample_dataset(tmp_path, 4, seed=0)
    before = open_source(str(tmp_path)).fingerprint()
    assert open_source(str(tmp_path)).fingerprint() == before
    (tmp_path / "circles" / "extra.jpg").write_bytes(cases.photo_jpeg())
    assert open_source(str(tmp_path)).fingerprint() != before
