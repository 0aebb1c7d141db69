"""The index cache: a source's index kept as Parquet, rebuilt only when the source changes.

Keyed by the source URI (`cache_path`) and checked against the source's listing
fingerprint, so adding, removing or rewriting a file rebuilds the index; nothing else does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from packer.contract.files import write_atomically
from packer.index.build import build_index
from packer.index.table import (
    CACHE_PATH_KEY,
    FINGERPRINT_KEY,
    INDEX_SCHEMA,
    INDEX_VERSION,
    META_KEYS,
)
from packer.sources import normalize_uri, open_source


def default_cache_dir() -> Path:
    """$NAVIT_CACHE_DIR, else ~/.cache/navit-pack/index."""
    configured = os.environ.get("NAVIT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "navit-pack" / "index"


def cache_path(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Where the index of `uri` is cached: <cache_dir>/<sha256 of the normalised uri>.parquet."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(normalize_uri(uri).encode()).hexdigest()[:32]
    return directory / f"{digest}.parquet"


def load_index(uri: str, cache_dir: str | Path | None = None, num_threads: int = 8) -> pa.Table:
    """The index of `uri`, from the cache when its fingerprint still matches the source.

    The fingerprint is the source listing's hash (paths, sizes, mtimes) and INDEX_VERSION,
    so adding, removing or rewriting a file rebuilds the index; nothing else does.
    """
    source = open_source(uri)
    fingerprint = f"v{INDEX_VERSION}:{source.fingerprint()}".encode()
    path = cache_path(source.uri, cache_dir)
    cached = _read_cached(path, fingerprint)
    if cached is not None:
        return _with_cache_path(cached, path)
    table = build_index(source, num_threads=num_threads)
    metadata = dict(table.schema.metadata or {})
    metadata[FINGERPRINT_KEY] = fingerprint
    table = table.replace_schema_metadata(metadata)
    write_atomically(path, lambda out: pq.write_table(table, out))
    return _with_cache_path(table, path)


def _with_cache_path(table: pa.Table, path: Path) -> pa.Table:
    """Say where the index is cached (`navit.cache`, never stored in the file itself), so
    what lives beside it (packer.index.reject_ledger) is found from the table alone."""
    metadata = dict(table.schema.metadata or {})
    metadata[CACHE_PATH_KEY] = str(path).encode()
    return table.replace_schema_metadata(metadata)


def _read_cached(path: Path, fingerprint: bytes) -> pa.Table | None:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return None  # absent or unreadable: rebuild
    metadata = schema.metadata or {}
    if metadata.get(FINGERPRINT_KEY) != fingerprint:
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    if table.schema.remove_metadata() != INDEX_SCHEMA:
        return None
    kept = {key: value for key, value in metadata.items() if key in META_KEYS}
    return table.replace_schema_metadata(kept)
