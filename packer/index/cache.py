"""The index cache: a source's index kept on disk, memory-mapped, rebuilt group by group.

Per source (keyed by its URI, `cache_path`), a folder holds:

    <hash>/index.arrow          the whole index, an Arrow IPC file: memory-mapped when
                                loaded, so only the planner's columns become resident
                                (packer.index.image_index)
    <hash>/groups/<g>-<o>.arrow each file group's part (packer.index.build), named by
                                the group's files (paths, sizes, mtimes) and how sizes
                                were found
    <hash>/index.rejects.json   the reject ledger (packer.index.reject_ledger)

`index.arrow` is used while the source's listing fingerprint matches; otherwise only the
groups without a part are scanned (a shard added: that shard) and the index is put
together again from the parts, in listing order. Nothing else triggers a scan.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from packer.contract.files import write_atomically
from packer.index.build import (
    GroupScan,
    GroupScanner,
    IndexOptions,
    class_names,
    group_summary,
    index_metadata,
    numbered,
    refuse_mismatches,
    scan_groups_on_threads,
)
from packer.index.image_index import ImageIndex
from packer.index.table import CACHE_PATH_KEY, FINGERPRINT_KEY, INDEX_SCHEMA, INDEX_VERSION
from packer.sources import FileGroup, Source, normalize_uri, open_source

_SCAN_KEY = b"navit.scan"  # what the last build scanned: {"groups", "scanned", ...}
_VERIFIED_KEY = b"navit.verified"  # share of metadata sizes checked against headers
_GROUP_KEY = b"navit.group"  # a part's summary: labels, verified share, bytes read
_BATCH_ROWS = 1 << 16


def default_cache_dir() -> Path:
    """$NAVIT_CACHE_DIR, else ~/.cache/navit-pack/index."""
    configured = os.environ.get("NAVIT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "navit-pack" / "index"


def cache_path(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Where the index of `uri` is cached: <cache_dir>/<sha256 of the uri>/index.arrow."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(normalize_uri(uri).encode()).hexdigest()[:32]
    return directory / digest / "index.arrow"


def load_index(
    uri: str | Source,
    cache_dir: str | Path | None = None,
    num_threads: int = 8,
    options: IndexOptions | None = None,
    scanner: GroupScanner | None = None,
) -> ImageIndex:
    """The index of `uri` (or of a source already opened), from the cache when its
    fingerprint still matches the source.

    The fingerprint is the source listing's hash (paths, sizes, mtimes), INDEX_VERSION
    and where sizes may come from. A changed source has only its new or changed file
    groups scanned, by `scanner` (default: `num_threads` threads; packer.pipeline scans
    on Ray). A `options.verify_sizes` share above what the cache checked scans again the
    groups that have metadata sizes, reading only the sampled headers; a contradicted
    size raises SizeMismatchError and caches nothing of that group.
    """
    options = options or IndexOptions()
    source = uri if isinstance(uri, Source) else open_source(uri)
    fingerprint = f"v{INDEX_VERSION}:{options.sizes_from}:{source.fingerprint()}".encode()
    path = cache_path(source.uri, cache_dir)
    cached = _open_cached(path, fingerprint, options.verify_sizes)
    if cached is not None:
        return cached
    started = time.perf_counter()
    groups = source.file_groups()
    parts = {group.digest: _part_path(path, group, options) for group in groups}
    # A group is scanned when it has no part yet, or one checked less than asked.
    todo = [
        g
        for g in groups
        if _part_summary(parts[g.digest]).get("verified", -1.0) < options.verify_sizes
        or not parts[g.digest].exists()
    ]
    scan = scanner or functools.partial(scan_groups_on_threads, num_threads=num_threads)
    scans = []
    image_bytes = 0
    for result in scan(todo, options):
        scans.append(result)
        image_bytes += result.image_bytes_read
        if not result.mismatches:
            _write_part(parts[result.group.digest], result)
    refuse_mismatches(scans)
    summaries = [_part_summary(parts[g.digest]) for g in groups]
    names = class_names(source, summaries)
    report = {
        "groups": len(groups),
        "scanned": len(todo),
        "image_bytes_read": image_bytes,
        "seconds": round(time.perf_counter() - started, 3),
    }
    metadata = index_metadata(source, names)
    metadata[FINGERPRINT_KEY] = fingerprint
    metadata[_VERIFIED_KEY] = str(min((s["verified"] for s in summaries), default=1.0)).encode()
    metadata[_SCAN_KEY] = json.dumps(report).encode()
    ordered = [parts[g.digest] for g in groups]
    write_atomically(path, lambda out: _write_index(out, ordered, names, metadata))
    _remove_stale_parts(path, set(parts.values()))
    return _with_cache_path(ImageIndex.open(path), path)


def scan_report(index: ImageIndex) -> dict:
    """What the build that wrote this index scanned: {"groups": 20, "scanned": 1,
    "image_bytes_read": ..., "seconds": ...}; {} for an index built otherwise."""
    raw = (index.schema.metadata or {}).get(_SCAN_KEY)
    return json.loads(raw) if raw else {}


def _open_cached(path: Path, fingerprint: bytes, verify: float) -> ImageIndex | None:
    try:
        with pa.OSFile(str(path)) as raw:
            schema = pa.ipc.open_file(raw).schema
    except (OSError, pa.ArrowException):
        return None  # absent or unreadable: rebuild
    metadata = schema.metadata or {}
    if metadata.get(FINGERPRINT_KEY) != fingerprint:
        return None
    if float(metadata.get(_VERIFIED_KEY, b"0")) < verify:
        return None
    try:
        return _with_cache_path(ImageIndex.open(path), path)
    except (OSError, ValueError, pa.ArrowException):
        return None


def _with_cache_path(index: ImageIndex, path: Path) -> ImageIndex:
    """Say where the index is cached (`navit.cache`, never stored in the file itself), so
    what lives beside it (packer.index.reject_ledger) is found from the index alone."""
    metadata = dict(index.schema.metadata or {})
    metadata[CACHE_PATH_KEY] = str(path).encode()
    return index.with_metadata(metadata)


def _part_path(index_path: Path, group: FileGroup, options: IndexOptions) -> Path:
    how = hashlib.sha256(options.sizes_from.encode()).hexdigest()[:8]
    return index_path.parent / "groups" / f"{group.digest}-{how}.arrow"


def _write_part(path: Path, scan: GroupScan) -> None:
    metadata = {_GROUP_KEY: json.dumps(group_summary(scan)).encode()}
    table = scan.table.replace_schema_metadata(metadata)

    def write(out: BinaryIO) -> None:
        with pa.ipc.new_file(out, table.schema) as writer:
            writer.write_table(table)

    write_atomically(path, write, durable=False)


def _part_summary(path: Path) -> dict:
    try:
        with pa.OSFile(str(path)) as raw:
            metadata = pa.ipc.open_file(raw).schema.metadata or {}
        return json.loads(metadata[_GROUP_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return {}


def _write_index(
    out: BinaryIO, parts: list[Path], names: list[str], metadata: dict[bytes, bytes]
) -> None:
    """The parts, in order, as one IPC file; a part at a time in memory."""
    with pa.ipc.new_file(out, INDEX_SCHEMA.with_metadata(metadata)) as writer:
        for part in parts:
            with pa.memory_map(str(part)) as mapped:
                table = pa.ipc.open_file(mapped).read_all()
                writer.write_table(numbered(table, names), max_chunksize=_BATCH_ROWS)


def _remove_stale_parts(index_path: Path, kept: set[Path]) -> None:
    """Parts of groups the source no longer has (a shard removed or rewritten)."""
    for part in (index_path.parent / "groups").glob("*.arrow"):
        if part not in kept:
            part.unlink(missing_ok=True)
