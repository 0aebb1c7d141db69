"""ByteReader: whole files, byte ranges, Parquet rows; failures become read_error."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packer.image.reject import RejectedImage
from packer.sources import ByteReader


def test_reader_turns_io_failures_into_read_error(tmp_path):
    reader = ByteReader()
    with pytest.raises(RejectedImage) as info:
        reader.read(str(tmp_path / "missing.jpg"), -1, -1, -1)
    assert info.value.reason == "read_error"
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [b"x"]}), parquet)
    with pytest.raises(RejectedImage) as info:
        reader.read(str(parquet), -1, -1, 5)
    assert info.value.reason == "read_error"


def test_reader_reads_byte_ranges_and_file_uris(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)))
    reader = ByteReader()
    assert reader.read(str(path), 10, 4, -1) == bytes([10, 11, 12, 13])
    assert reader.read(f"file://{path}", 250, 100, -1) == bytes(range(250, 256))  # short
    assert reader.read(f"file://{path}", -1, -1, -1) == bytes(range(256))


def test_reader_pickles_to_a_fresh_reader(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abcdef")
    reader = ByteReader()
    reader.read(str(path), 0, 2, -1)  # opens and caches a handle
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(str(path), 2, 2, -1) == b"cd"
