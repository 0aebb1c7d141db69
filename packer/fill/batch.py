"""The fill step: turn one BatchPlan into a PackedBatch by decoding its images. Pure.

This is the heavy part of the pipeline (read bytes, decode at reduced scale, resize to
the planned grid, patchify, keep the planned tokens, write them into their slots);
`packer.pipeline` runs it on Ray workers, one plan per task.

An image that fails to read or decode is rejected with its reason, and the images after
it in its sequence move up: for a planned sequence [a(3 tokens), b(2), c(4)] at seq_len
10 where b is corrupt, segment_ids become [1, 1, 1, 2, 2, 2, 2, 0, 0, 0] with c in slot
2. The result is still a pure function of the plan and the bytes.

Pillow's warnings, log messages and what its C libraries print while an image decodes
become its notes (`FillResult.notes`, see packer.image.notes), never lines on stderr, in
whatever process runs the fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from packer.contract.packed_folder import batch_path, write_batch_file
from packer.contract.schema import PackedBatch, to_record_batch
from packer.image.formats import format_named_by
from packer.image.imageio import decode_resized
from packer.image.notes import ImageNote, capture_notes, notes_of
from packer.image.patchify import patchify
from packer.image.reject import Reject, RejectedImage
from packer.plan.batch_plan import BatchPlan
from packer.plan.sampling import kept_token_indices
from packer.plan.stats import PackingStats
from packer.sources import ByteReader


@dataclass
class FillResult:
    packed: PackedBatch
    rejected: list[Reject] = field(default_factory=list)
    notes: list[ImageNote] = field(default_factory=list)  # what Pillow said, per image

    @property
    def rejected_reasons(self) -> list[str]:
        return [r.reason for r in self.rejected]


_process_reader: ByteReader | None = None


def _reader() -> ByteReader:
    # One reader per worker process, kept across batches: its open files and cached
    # Parquet row groups serve the next batch too, instead of being reopened per batch.
    global _process_reader
    if _process_reader is None:
        _process_reader = ByteReader()
    return _process_reader


def fill_batch(plan: BatchPlan, reader: ByteReader | None = None) -> FillResult:
    """Decode and patchify every planned image into its sequence's next free slot."""
    config = plan.config
    p, seq_len = config.patch_size, config.seq_len
    num_seq = plan.num_sequences
    reader = reader or _reader()

    patches = np.zeros((num_seq, seq_len, config.patch_dim), np.uint8)
    segment_ids = np.zeros((num_seq, seq_len), np.int32)
    patch_rows = np.zeros((num_seq, seq_len), np.int16)
    patch_cols = np.zeros((num_seq, seq_len), np.int16)
    next_token = np.zeros(num_seq, np.int64)
    next_slot = np.ones(num_seq, np.int32)
    kept: list[int] = []  # plan positions of images that made it, in row order
    rejected: list[Reject] = []
    notes: list[ImageNote] = []

    # One capture for the whole batch: entering it sets up warning and log filters,
    # work that per image was a measurable share of a small photo's fill (see
    # bench/RESULTS.md); notes_of still gives each image its own notes.
    with capture_notes():
        for i in range(plan.num_images):
            s = int(plan.sequence[i])
            gh, gw, n_keep = int(plan.grid_h[i]), int(plan.grid_w[i]), int(plan.num_kept[i])
            try:
                with notes_of(plan.image_ids[i]) as image_notes:
                    data = reader.read(
                        plan.uri[i],
                        int(plan.offset[i]),
                        int(plan.length[i]),
                        int(plan.source_row[i]),
                    )
                    # A folder's file decodes as the format its name says (plan.uri is the
                    # file); a shard member or Parquet row by signature alone.
                    image = decode_resized(data, gw * p, gh * p, format_named_by(plan.uri[i]))
            except RejectedImage as e:
                rejected.append(Reject(plan.image_ids[i], e.reason, e.detail))
                continue
            finally:
                notes.extend(image_notes)
            tokens = kept_token_indices(config, plan.epoch, int(plan.key[i]), gh * gw, n_keep)
            start, stop = int(next_token[s]), int(next_token[s]) + len(tokens)
            if n_keep == gh * gw:  # nothing dropped: one copy, straight into the slot
                patchify(image, p, out=patches[s, start:stop])
            else:
                patches[s, start:stop] = patchify(image, p)[tokens]
            segment_ids[s, start:stop] = next_slot[s]
            patch_rows[s, start:stop] = tokens // gw
            patch_cols[s, start:stop] = tokens % gw
            next_token[s] = stop
            next_slot[s] += 1
            kept.append(i)

    idx = np.asarray(kept, dtype=np.int64)
    batch = PackedBatch(
        patches=patches,
        segment_ids=segment_ids,
        patch_rows=patch_rows,
        patch_cols=patch_cols,
        images_per_seq=(next_slot - 1).astype(np.int32),
        image_grid_h=plan.grid_h[idx].astype(np.int16),
        image_grid_w=plan.grid_w[idx].astype(np.int16),
        labels=plan.label[idx].astype(np.int64),
        image_ids=[plan.image_ids[i] for i in kept],
        patch_size=p,
        config_version=plan.config_version,
    )
    return FillResult(batch, rejected, notes)


@dataclass(frozen=True)
class WrittenBatch:
    """What filling and writing one plan reports back: never the pixels, which stay in
    the batch file (a Ray worker sends this small record to the driver)."""

    epoch: int
    global_batch: int
    stats: PackingStats  # this batch's, as delivered
    rejected: list[Reject]
    notes: list[ImageNote]


def fill_and_write(
    plan: BatchPlan, out_dir: Path, reader: ByteReader | None = None
) -> WrittenBatch:
    """Fill `plan` and write it as its batch file of the packed folder `out_dir`
    (packer.contract.packed_folder): what `navit pack` and the in-process packing do
    for every batch."""
    result = fill_batch(plan, reader)
    path = batch_path(out_dir, plan.epoch, plan.global_batch)
    write_batch_file(path, to_record_batch(result.packed))
    stats = PackingStats()
    stats.add_filled(plan, result.packed, result.rejected_reasons, [n.kind for n in result.notes])
    return WrittenBatch(plan.epoch, plan.global_batch, stats, result.rejected, result.notes)
