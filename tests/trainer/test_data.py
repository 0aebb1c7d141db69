"""The batch stream: folder ranks get equal counts, Flight client tickets, tokens, cursors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from pyarrow import flight

from packer.contract.cursor import Cursor
from packer.contract.packed_folder import batch_path
from packer.contract.schema import PackedBatch
from tests.trainer.trainer_synthetic import ListFlightServer, make_batch, random_layout, write_arrow
from trainer.data import iter_batches, prefetch_in_thread, read_arrow_file, to_device

SEQ_LEN = 32


def batches_for(count: int, seed: int) -> list[PackedBatch]:
    rng = np.random.default_rng(seed)
    return [
        make_batch(random_layout(rng, 2, SEQ_LEN), SEQ_LEN, seed=seed * 1000 + j)
        for j in range(count)
    ]


def write_epoch(root, epoch: int, batches: list[PackedBatch]) -> None:
    for j, batch in enumerate(batches):
        write_arrow(batch, batch_path(root, epoch, j))


def test_arrow_file_round_trips(tmp_path):
    batch = batches_for(1, seed=3)[0]
    write_arrow(batch, tmp_path / "batch-000000.arrow")
    read = read_arrow_file(tmp_path / "batch-000000.arrow")
    np.testing.assert_array_equal(read.patches, batch.patches)
    np.testing.assert_array_equal(read.segment_ids, batch.segment_ids)
    assert read.image_ids == batch.image_ids and read.patch_size == batch.patch_size


def test_folder_ranks_get_equal_counts_and_share_the_tail_without_padding(tmp_path):
    batches = batches_for(5, seed=1)  # 2 sequences each
    write_epoch(tmp_path, 0, batches)
    world_size = 3  # 5 batches over 3 ranks: 2 each; batches 3 and 4 shared out 2, 1, 1
    per_rank = {
        rank: list(iter_batches(tmp_path, Cursor(rank, world_size), end_epoch=1, prefetch=1))
        for rank in range(world_size)
    }
    assert {rank: len(items) for rank, items in per_rank.items()} == {0: 2, 1: 2, 2: 2}
    # Each batch comes with the cursor after it.
    assert [cursor for cursor, _ in per_rank[2]] == [Cursor(2, 3, 0, 1), Cursor(2, 3, 0, 2)]
    # The first round is plain striding; the tail holds no all-padding sequence.
    assert [per_rank[r][0][1].image_ids for r in range(3)] == [b.image_ids for b in batches[:3]]
    tail = [per_rank[r][1][1] for r in range(3)]
    assert [b.num_sequences for b in tail] == [2, 1, 1]
    assert all((b.images_per_seq > 0).all() for b in tail)
    np.testing.assert_array_equal(tail[1].patches[0], batches[4].patches[0])
    # Every image exactly once over all ranks.
    seen = [i for items in per_rank.values() for _, b in items for i in b.image_ids]
    expected = [i for b in batches for i in b.image_ids]
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)


def test_folder_cursor_resumes_and_single_epoch_folder_repeats(tmp_path):
    batches = batches_for(4, seed=2)
    write_epoch(tmp_path, 0, batches)
    items = list(iter_batches(tmp_path, Cursor(0, 1, 0, 3), end_epoch=3, prefetch=0))
    assert [(c.epoch, c.next_batch) for c, _ in items] == [(0, 4), (1, 1), (1, 2), (1, 3)] + [
        (1, 4),
        *((2, k) for k in range(1, 5)),
    ]
    assert items[0][1].image_ids == batches[3].image_ids
    assert items[1][1].image_ids == batches[0].image_ids  # epoch 1 replays epoch-000
    # Resuming from a yielded cursor (here the end of epoch 0) continues with the batch
    # after it: nothing lost or repeated.
    resumed = list(iter_batches(tmp_path, items[0][0], end_epoch=3, prefetch=0))
    assert [c for c, _ in resumed] == [c for c, _ in items[1:]]
    assert [b.image_ids for _, b in resumed] == [b.image_ids for _, b in items[1:]]


def test_folder_missing_batch_file_is_an_error(tmp_path):
    batches = batches_for(3, seed=4)
    write_epoch(tmp_path, 0, batches)
    (tmp_path / "epoch-000" / "batch-000001.arrow").unlink()
    with pytest.raises(ValueError, match="missing"):
        next(iter_batches(tmp_path, Cursor(0, 1), prefetch=0))


def test_flight_client_reads_rank_stream():
    epochs = [batches_for(5, seed=10), batches_for(5, seed=11)]
    server = ListFlightServer(epochs, token="s3cret")
    try:
        location = f"grpc://127.0.0.1:{server.port}"
        start = Cursor(rank=1, world_size=2, epoch=0, next_batch=1)
        items = list(iter_batches(location, start, token="s3cret", end_epoch=2))
        # Rank 1 of 2 over 5 batches: k = 0..2 holds global batches 1, 3 and padding.
        # Each comes with the cursor after it.
        cursors = [(c.rank, c.world_size, c.epoch, c.next_batch) for c, _ in items]
        assert cursors == [(1, 2, 0, 2), (1, 2, 0, 3), (1, 2, 1, 1), (1, 2, 1, 2), (1, 2, 1, 3)]
        assert items[0][1].image_ids == epochs[0][3].image_ids
        assert items[1][1].num_images == 0  # j = 5: padding from the server
        assert items[2][1].image_ids == epochs[1][1].image_ids
        np.testing.assert_array_equal(items[3][1].patches, epochs[1][3].patches)
        assert all(batch.config_version == 7 for _, batch in items)
        assert server.tickets == [
            {"rank": 1, "world_size": 2, "epoch": 0, "start_batch": 1},
            {"rank": 1, "world_size": 2, "epoch": 1, "start_batch": 0},
        ]
        with pytest.raises(flight.FlightUnauthenticatedError):
            next(iter_batches(location, Cursor(0, 1), token="wrong", prefetch=0))
        # Without an epoch limit the stream ends when the service has nothing at batch 0.
        assert len(list(iter_batches(location, Cursor(0, 1), token="s3cret", prefetch=0))) == 10
    finally:
        server.shutdown()


def test_prefetch_reraises_errors_and_stops_when_closed():
    def failing():
        yield 1
        raise RuntimeError("disk on fire")

    items = prefetch_in_thread(failing(), depth=1)
    assert next(items) == 1
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(items)

    produced = threading.Event()

    def endless():
        k = 0
        while True:
            produced.set()
            yield k
            k += 1

    stream = prefetch_in_thread(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # must not hang on the full queue


def test_to_device_is_zero_copy_on_cpu(tmp_path):
    write_arrow(batches_for(1, seed=6)[0], tmp_path / "batch-000000.arrow")
    batch = read_arrow_file(tmp_path / "batch-000000.arrow")
    tensors = to_device(batch, "cpu")
    assert tensors["patches"].dtype == torch.uint8
    assert tensors["patches"].data_ptr() == batch.patches.ctypes.data
    assert tensors["segment_ids"].data_ptr() == batch.segment_ids.ctypes.data
    assert tensors["labels"].tolist() == batch.labels.tolist()
