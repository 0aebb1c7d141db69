"""The one-image-per-row layout: how NaFlex (timm, transformers) batches variable-resolution
images, the baseline bench/bench_train.py measures packing against.

    padded = pad_one_image_per_row(packed_batch)   # the same images, one per row

No packing, so a 4-token image padded next to a 576-token one wastes 572 tokens. The
model scores both layouts the same (tests/trainer/test_model.py holds it).
"""

from __future__ import annotations

import numpy as np

from packer.contract.schema import PackedBatch


def pad_one_image_per_row(batch: PackedBatch, multiple_of: int = 1) -> PackedBatch:
    """The same images with one image per row, padded to the longest (rounded up).

    This is how NaFlex (timm, transformers) batches variable-resolution images: no packing,
    so a 4-token image padded next to a 576-token one wastes 572 tokens. Labels keep their
    order, so the logits of the packed and the padded batch line up row by row.
    """
    num_images = batch.num_images
    real = batch.segment_ids > 0  # [B, L]
    # Real tokens in row-major order are already grouped by image, in label order.
    token_image = _numpy_image_index(batch)[real]  # [T]
    lengths = np.bincount(token_image, minlength=num_images)  # [N]
    longest = int(lengths.max()) if num_images else 1
    width = -(-longest // multiple_of) * multiple_of  # round up
    starts = np.cumsum(lengths) - lengths  # [N]
    token_slot = np.arange(token_image.size) - starts[token_image]  # [T] position in its row
    padded = PackedBatch.empty(max(num_images, 1), width, batch.patch_size)
    padded.patches[token_image, token_slot] = batch.patches[real]
    padded.segment_ids[token_image, token_slot] = 1
    padded.patch_rows[token_image, token_slot] = batch.patch_rows[real]
    padded.patch_cols[token_image, token_slot] = batch.patch_cols[real]
    padded.images_per_seq[:num_images] = 1
    padded.image_grid_h = batch.image_grid_h.copy()
    padded.image_grid_w = batch.image_grid_w.copy()
    padded.labels = batch.labels.copy()
    padded.image_ids = list(batch.image_ids)
    padded.config_version = batch.config_version
    return padded


def _numpy_image_index(batch: PackedBatch) -> np.ndarray:
    # numpy twin of token_image_index: [B, L] int64, padding -> N
    counts = batch.images_per_seq.astype(np.int64)
    first_image = np.cumsum(counts) - counts
    seg = batch.segment_ids.astype(np.int64)
    return np.where(seg > 0, first_image[:, None] + seg - 1, batch.num_images)
