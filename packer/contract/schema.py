"""The packed-batch contract: the Arrow schema and converters both ways.

One Arrow row is one packed sequence of `seq_len` tokens (docs/DESIGN.md):

    patches       fixed_shape_tensor<uint8>[seq_len, p*p*3]  pixels, (py, px, c) order
    segment_ids   fixed_size_list<int32>[seq_len]           0 = padding, 1..k = k-th image
    patch_rows    fixed_size_list<int16>[seq_len]           row in the image's patch grid
    patch_cols    fixed_size_list<int16>[seq_len]           column in the image's grid
    image_grid_h  list<int16>  (k items)                    grid height before token drop
    image_grid_w  list<int16>  (k items)                    grid width before token drop
    labels        list<int64>  (k items)                    class id, -1 if none
    image_ids     list<string> (k items)                    stable source id

For a sequence holding a 2x2 image (all 4 tokens kept) then a 1x3 image with one token
dropped, at seq_len 8: segment_ids = [1, 1, 1, 1, 2, 2, 0, 0], patch_rows =
[0, 0, 1, 1, 0, 0, 0, 0], patch_cols = [0, 1, 0, 1, 0, 2, 0, 0], image_grid_h = [2, 1],
image_grid_w = [2, 3].

This module needs only numpy and pyarrow, so a GPU trainer box can import it without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from packer.contract.classes import CLASS_NAMES_KEY

SCHEMA_VERSION = 1

COLUMNS = (
    "patches",
    "segment_ids",
    "patch_rows",
    "patch_cols",
    "image_grid_h",
    "image_grid_w",
    "labels",
    "image_ids",
)


def packed_schema(
    patch_size: int,
    seq_len: int,
    config_version: int = 0,
    class_names: list[str] | None = None,
) -> pa.Schema:
    """The Arrow schema of packed batches, with the contract's metadata; a stream's schema
    also names its classes (packer.contract.classes)."""
    patch_dim = patch_size * patch_size * 3
    fields = [
        pa.field("patches", pa.fixed_shape_tensor(pa.uint8(), [seq_len, patch_dim])),
        pa.field("segment_ids", pa.list_(pa.int32(), seq_len)),
        pa.field("patch_rows", pa.list_(pa.int16(), seq_len)),
        pa.field("patch_cols", pa.list_(pa.int16(), seq_len)),
        pa.field("image_grid_h", pa.list_(pa.int16())),
        pa.field("image_grid_w", pa.list_(pa.int16())),
        pa.field("labels", pa.list_(pa.int64())),
        pa.field("image_ids", pa.list_(pa.string())),
    ]
    metadata = {
        "patch_size": str(patch_size),
        "seq_len": str(seq_len),
        "schema_version": str(SCHEMA_VERSION),
        "config_version": str(config_version),
    }
    if class_names is not None:
        metadata[CLASS_NAMES_KEY.decode()] = json.dumps(list(class_names))
    return pa.schema(fields, metadata=metadata)


@dataclass
class PackedBatch:
    """A packed batch as numpy arrays: B sequences of L tokens holding N images in all.

    Per-image arrays are flat over the batch in row order (sequence 0's images first,
    each in slot order), so `labels[i]` belongs to the i-th image of the batch.
    """

    patches: np.ndarray  # [B, L, p*p*3] uint8
    segment_ids: np.ndarray  # [B, L] int32
    patch_rows: np.ndarray  # [B, L] int16
    patch_cols: np.ndarray  # [B, L] int16
    images_per_seq: np.ndarray  # [B] int32, k for each sequence
    image_grid_h: np.ndarray  # [N] int16
    image_grid_w: np.ndarray  # [N] int16
    labels: np.ndarray  # [N] int64
    image_ids: list[str]  # N ids
    patch_size: int
    config_version: int = 0

    @property
    def num_sequences(self) -> int:
        return int(self.segment_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.segment_ids.shape[1])

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def real_tokens(self) -> int:
        return int(np.count_nonzero(self.segment_ids))

    @property
    def pad_tokens(self) -> int:
        return int(self.segment_ids.size) - self.real_tokens

    @classmethod
    def empty(cls, num_sequences: int, seq_len: int, patch_size: int) -> PackedBatch:
        """An all-padding batch (used to give every rank the same batch count)."""
        patch_dim = patch_size * patch_size * 3
        return cls(
            patches=np.zeros((num_sequences, seq_len, patch_dim), np.uint8),
            segment_ids=np.zeros((num_sequences, seq_len), np.int32),
            patch_rows=np.zeros((num_sequences, seq_len), np.int16),
            patch_cols=np.zeros((num_sequences, seq_len), np.int16),
            images_per_seq=np.zeros(num_sequences, np.int32),
            image_grid_h=np.zeros(0, np.int16),
            image_grid_w=np.zeros(0, np.int16),
            labels=np.zeros(0, np.int64),
            image_ids=[],
            patch_size=patch_size,
        )


def sequences_of(batches: list[PackedBatch], start: int, stop: int) -> PackedBatch:
    """Sequences [start, stop) of `batches` concatenated in order, as one batch (a rank's
    share of an epoch's tail, packer.contract.rank_layout). For batches of 3 and 2
    sequences, [2, 4) is the first batch's last sequence and the second's first.
    """
    rows: list[PackedBatch] = []
    first = 0
    for batch in batches:
        lo, hi = max(start - first, 0), min(stop - first, batch.num_sequences)
        if lo < hi:
            rows.append(_rows(batch, lo, hi))
        first += batch.num_sequences
    if not rows:
        raise ValueError(f"no sequences in [{start}, {stop}) of {first}")
    return PackedBatch(
        patches=np.concatenate([b.patches for b in rows]),
        segment_ids=np.concatenate([b.segment_ids for b in rows]),
        patch_rows=np.concatenate([b.patch_rows for b in rows]),
        patch_cols=np.concatenate([b.patch_cols for b in rows]),
        images_per_seq=np.concatenate([b.images_per_seq for b in rows]),
        image_grid_h=np.concatenate([b.image_grid_h for b in rows]),
        image_grid_w=np.concatenate([b.image_grid_w for b in rows]),
        labels=np.concatenate([b.labels for b in rows]),
        image_ids=[i for b in rows for i in b.image_ids],
        patch_size=rows[0].patch_size,
        config_version=rows[0].config_version,
    )


def _rows(batch: PackedBatch, lo: int, hi: int) -> PackedBatch:
    """Sequences lo..hi-1 of one batch, their images with them."""
    first_image = np.concatenate([[0], np.cumsum(batch.images_per_seq)])
    a, b = int(first_image[lo]), int(first_image[hi])
    return PackedBatch(
        patches=batch.patches[lo:hi],
        segment_ids=batch.segment_ids[lo:hi],
        patch_rows=batch.patch_rows[lo:hi],
        patch_cols=batch.patch_cols[lo:hi],
        images_per_seq=batch.images_per_seq[lo:hi],
        image_grid_h=batch.image_grid_h[a:b],
        image_grid_w=batch.image_grid_w[a:b],
        labels=batch.labels[a:b],
        image_ids=batch.image_ids[a:b],
        patch_size=batch.patch_size,
        config_version=batch.config_version,
    )


def _list_array(values: np.ndarray, counts: np.ndarray, value_type: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def _fixed_list(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    b, length = values.shape
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, length)


def to_record_batch(batch: PackedBatch) -> pa.RecordBatch:
    """PackedBatch -> Arrow record batch with the contract's schema and metadata."""
    counts = batch.images_per_seq
    schema = packed_schema(batch.patch_size, batch.seq_len, batch.config_version)
    patches = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(batch.patches))
    columns = [
        patches,
        _fixed_list(batch.segment_ids, pa.int32()),
        _fixed_list(batch.patch_rows, pa.int16()),
        _fixed_list(batch.patch_cols, pa.int16()),
        _list_array(batch.image_grid_h, counts, pa.int16()),
        _list_array(batch.image_grid_w, counts, pa.int16()),
        _list_array(batch.labels, counts, pa.int64()),
        _list_array(np.asarray(batch.image_ids, dtype=object), counts, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _fixed_list_to_numpy(column: pa.Array, dtype: np.dtype) -> np.ndarray:
    # flatten() honours the array's slice offset and is zero-copy for a fixed-size list.
    flat = column.flatten().to_numpy(zero_copy_only=True)
    return flat.reshape(len(column), column.type.list_size).astype(dtype, copy=False)


def from_record_batch(record_batch: pa.RecordBatch | pa.Table) -> PackedBatch:
    """Arrow -> PackedBatch; the large columns (patches, ids, coordinates) are zero-copy."""
    if isinstance(record_batch, pa.Table):
        record_batch = record_batch.combine_chunks().to_batches()[0]
    missing = [name for name in COLUMNS if name not in record_batch.schema.names]
    if missing:
        raise ValueError(f"not a packed batch: missing columns {missing}")
    metadata = {k.decode(): v.decode() for k, v in (record_batch.schema.metadata or {}).items()}
    patches_col = record_batch.column("patches")
    patches = patches_col.to_numpy_ndarray()
    labels_col = record_batch.column("labels")
    offsets = labels_col.offsets.to_numpy()
    return PackedBatch(
        patches=patches,
        segment_ids=_fixed_list_to_numpy(record_batch.column("segment_ids"), np.int32),
        patch_rows=_fixed_list_to_numpy(record_batch.column("patch_rows"), np.int16),
        patch_cols=_fixed_list_to_numpy(record_batch.column("patch_cols"), np.int16),
        images_per_seq=np.diff(offsets).astype(np.int32),
        image_grid_h=record_batch.column("image_grid_h").flatten().to_numpy(),
        image_grid_w=record_batch.column("image_grid_w").flatten().to_numpy(),
        labels=labels_col.flatten().to_numpy(),
        image_ids=record_batch.column("image_ids").flatten().to_pylist(),
        patch_size=int(metadata.get("patch_size", 0)) or _infer_patch_size(patches),
        config_version=int(metadata.get("config_version", 0)),
    )


def _infer_patch_size(patches: np.ndarray) -> int:
    return int(round((patches.shape[-1] // 3) ** 0.5))
