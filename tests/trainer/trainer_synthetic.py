"""Synthetic packed batches for the trainer tests (no packer beyond packer.contract).

`make_batch([[(2, 3), (1, 4)], [(3, 3)]], seq_len=16)` packs a 2x3 and a 1x4 image into
sequence 0 and a 3x3 image into sequence 1, padding each sequence at the tail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import flight

from packer.contract.cursor import BatchMetadata
from packer.contract.packed_folder import write_batch_file
from packer.contract.schema import PackedBatch, to_record_batch

Grid = tuple[int, int]


def image_patches(
    rng: np.random.Generator, grid: Grid, patch_size: int, label: int | None
) -> np.ndarray:
    """[h*w, p*p*3] uint8 patches; with a label, the image has that class's colour."""
    tokens = grid[0] * grid[1]
    patch_dim = patch_size * patch_size * 3
    if label is None:
        return rng.integers(0, 256, (tokens, patch_dim), dtype=np.uint8)
    # Learnable: class c is a colour (one of a few hues) plus noise.
    colour = np.array(
        [(255, 40, 40), (40, 255, 40), (40, 40, 255), (230, 230, 40)][label % 4], np.float64
    )
    noise = rng.normal(0, 40, (tokens, patch_size * patch_size, 3))
    pixels = np.clip(colour * rng.uniform(0.6, 1.0) + noise, 0, 255)
    return pixels.reshape(tokens, patch_dim).astype(np.uint8)


def make_batch(
    layout: list[list[Grid]],
    seq_len: int,
    patch_size: int = 4,
    seed: int = 0,
    labels: list[int] | None = None,
    learnable: bool = False,
    patches: list[np.ndarray] | None = None,
) -> PackedBatch:
    """A PackedBatch with the given images per sequence (grids), random or given pixels."""
    rng = np.random.default_rng(seed)
    num_sequences = len(layout)
    batch = PackedBatch.empty(num_sequences, seq_len, patch_size)
    grids = [grid for sequence in layout for grid in sequence]
    if labels is None:
        labels = [int(rng.integers(0, 4)) for _ in grids]
    image = 0
    for row, sequence in enumerate(layout):
        position = 0
        for slot, (grid_h, grid_w) in enumerate(sequence, start=1):
            tokens = grid_h * grid_w
            assert position + tokens <= seq_len, "images do not fit the sequence"
            if patches is not None:
                pixels = patches[image]
            else:
                pixels = image_patches(
                    rng, (grid_h, grid_w), patch_size, labels[image] if learnable else None
                )
            span = slice(position, position + tokens)
            batch.patches[row, span] = pixels
            batch.segment_ids[row, span] = slot
            batch.patch_rows[row, span] = np.repeat(np.arange(grid_h), grid_w)
            batch.patch_cols[row, span] = np.tile(np.arange(grid_w), grid_h)
            position += tokens
            image += 1
        batch.images_per_seq[row] = len(sequence)
    batch.image_grid_h = np.array([g[0] for g in grids], np.int16)
    batch.image_grid_w = np.array([g[1] for g in grids], np.int16)
    batch.labels = np.array(labels, np.int64)
    batch.image_ids = [f"img-{seed}-{i}" for i in range(len(grids))]
    return batch


def write_arrow(batch: PackedBatch, path: Path) -> None:
    write_batch_file(path, to_record_batch(batch))


def random_layout(rng: np.random.Generator, num_sequences: int, seq_len: int) -> list[list[Grid]]:
    """Sequences filled first-fit with images of random grids (1..6 per side)."""
    layout: list[list[Grid]] = []
    for _ in range(num_sequences):
        sequence: list[Grid] = []
        used = 0
        while True:
            grid = (int(rng.integers(1, 7)), int(rng.integers(1, 7)))
            if used + grid[0] * grid[1] > seq_len or len(sequence) >= 8:
                break
            sequence.append(grid)
            used += grid[0] * grid[1]
        layout.append(sequence or [(1, 1)])
    return layout


def learnable_batches(
    count: int, num_sequences: int = 4, seq_len: int = 64, seed: int = 0
) -> list[PackedBatch]:
    """Packed batches whose 4 classes are colours, so a tiny model learns them fast."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        layout = random_layout(rng, num_sequences, seq_len)
        labels = [int(x) for x in rng.integers(0, 4, sum(len(s) for s in layout))]
        image_seed = int(rng.integers(1 << 30))
        batches.append(make_batch(layout, seq_len, seed=image_seed, labels=labels, learnable=True))
    return batches


def write_learnable_folder(
    root: Path, epochs: int, batches: int, num_sequences: int = 4, seq_len: int = 64, seed: int = 0
) -> Path:
    """DIR/epoch-{e:03d}/batch-{j:06d}.arrow of `learnable_batches`."""
    packed = learnable_batches(epochs * batches, num_sequences, seq_len, seed)
    for epoch in range(epochs):
        for j in range(batches):
            path = root / f"epoch-{epoch:03d}" / f"batch-{j:06d}.arrow"
            write_arrow(packed[epoch * batches + j], path)
    return root


class ListFlightServer(flight.FlightServerBase):
    """Serves rank streams from per-epoch batch lists, like the packer service's do_get."""

    def __init__(self, epochs: list[list[PackedBatch]], token: str) -> None:
        self.token = token
        super().__init__("grpc://127.0.0.1:0", middleware={"auth": TokenCheck(token)})
        self.epochs = epochs
        self.tickets: list[dict] = []

    def do_get(self, context, ticket):
        request = json.loads(ticket.ticket.decode())
        self.tickets.append(request)
        rank, world, epoch = request["rank"], request["world_size"], request["epoch"]
        batches = self.epochs[epoch] if epoch < len(self.epochs) else []
        shape = batches[0] if batches else self.epochs[0][0]
        schema = to_record_batch(shape).schema
        padding_shape = (shape.num_sequences, shape.seq_len, shape.patch_size)

        def stream():
            for k in range(request["start_batch"], -(-len(batches) // world)):
                j = k * world + rank
                batch = batches[j] if j < len(batches) else PackedBatch.empty(*padding_shape)
                metadata = BatchMetadata(epoch, k, j, rank, config_version=7)
                yield to_record_batch(batch), pa.py_buffer(metadata.to_bytes())

        return flight.GeneratorStream(schema, stream())


class TokenCheck(flight.ServerMiddlewareFactory):
    def __init__(self, token: str) -> None:
        self.token = token

    def start_call(self, info, headers):
        if headers.get("authorization") != [f"Bearer {self.token}"]:
            raise flight.FlightUnauthenticatedError("missing or wrong bearer token")
        return None
