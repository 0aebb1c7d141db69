"""FixedBatchSource: rank striding and batch metadata like the job's, without Ray."""

from __future__ import annotations

import pytest

from packer.contract.cursor import Cursor, TicketError
from packer.contract.rank_layout import batches_per_rank, global_batch_index
from packer.contract.schema import PackedBatch, to_record_batch
from service.fixed_batches import FixedBatchSource


def _source(batches_per_epoch: int) -> tuple[FixedBatchSource, list]:
    # Three distinct batches (1, 2 and 3 sequences) so a replayed one is recognisable.
    batches = [to_record_batch(PackedBatch.empty(n, 16, 4)) for n in (1, 2, 3)]
    return FixedBatchSource(batches, batches_per_epoch), batches


def test_rank_r_gets_global_batches_k_times_w_plus_r_in_order():
    source, batches = _source(batches_per_epoch=7)
    for rank in range(3):
        out = list(source.open_rank_stream(Cursor(rank, 3, epoch=2)))
        assert len(out) == batches_per_rank(7, 3) == 3
        for k, sent in enumerate(out):
            j = global_batch_index(rank, 3, k)
            assert (sent.metadata.epoch, sent.metadata.rank, sent.metadata.batch) == (2, rank, k)
            assert sent.metadata.global_batch == j
            assert sent.record_batch is batches[j % 3]
        assert source.produced[(rank, 3)] == 3


def test_a_stream_resumes_at_its_cursor_and_refuses_one_past_the_epoch():
    source, _ = _source(batches_per_epoch=4)
    out = list(source.open_rank_stream(Cursor(1, 2, epoch=0, next_batch=1)))
    assert [b.metadata.global_batch for b in out] == [3]
    with pytest.raises(TicketError) as caught:
        source.open_rank_stream(Cursor(0, 1, epoch=0, next_batch=5))
    assert caught.value.field == "start_batch"


def test_a_replay_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        FixedBatchSource([], batches_per_epoch=1)
