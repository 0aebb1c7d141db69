"""Dealing an epoch's batches to ranks (packer/contract/rank_layout.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from packer.contract.rank_layout import TailShare, epoch_layout, round_is_plain


def _deal(counts: list[int], world: int) -> dict[int, list]:
    layout = epoch_layout(len(counts), world, lambda j: counts[j])
    return {
        r: [layout.batch_of(r, k) for k in range(layout.batches_per_rank)] for r in range(world)
    }


def test_seven_batches_over_three_ranks_share_the_last_one():
    dealt = _deal([8] * 7, 3)
    assert dealt[0] == [0, 3, TailShare(6, 0, 3)]
    assert dealt[1] == [1, 4, TailShare(6, 3, 6)]
    assert dealt[2] == [2, 5, TailShare(6, 6, 8)]


def test_a_tail_smaller_than_the_ranks_takes_the_round_before_it():
    # Batch 4 holds 1 sequence for 2 ranks: rounds 1 and 2 (batches 2, 3, 4: 9 sequences)
    # are shared out over 4 batches.
    dealt = _deal([4, 4, 4, 4, 1], 2)
    assert dealt[0] == [0, TailShare(2, 0, 3), TailShare(2, 5, 7)]
    assert dealt[1] == [1, TailShare(2, 3, 5), TailShare(2, 7, 9)]


def test_an_epoch_ending_on_a_full_round_is_plain_striding():
    assert _deal([3, 3, 3, 2], 2) == {0: [0, 2], 1: [1, 3]}


def test_without_sharing_the_ranks_past_the_end_get_fillers():
    layout = epoch_layout(5, 2, lambda j: 4, share=False)
    # Global batch 5 is past the end: a share of nothing, a filler.
    assert [layout.batch_of(1, k) for k in range(3)] == [1, 3, TailShare(5, 0, 0)]


@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=40),
    world=st.integers(1, 9),
)
def test_every_sequence_goes_to_exactly_one_rank_and_ranks_get_equal_counts(counts, world):
    layout = epoch_layout(len(counts), world, lambda j: counts[j])
    seen: list[tuple[int, int]] = []  # (global batch, sequence) of the original batches
    starts = [sum(counts[:j]) for j in range(len(counts) + 1)]
    for rank in range(world):
        dealt = [layout.batch_of(rank, k) for k in range(layout.batches_per_rank)]
        assert layout.batch_of(rank, layout.batches_per_rank) is None
        for where in dealt:
            if isinstance(where, int):
                assert where < len(counts) or where >= layout.zone_start
                seen += [(where, s) for s in range(counts[where])] if where < len(counts) else []
                continue
            assert where.stop - where.start <= max(counts)  # never more than a batch held
            for position in range(where.start, where.stop):
                absolute = starts[where.zone_start] + position
                j = max(i for i in range(len(counts)) if starts[i] <= absolute)
                seen.append((j, absolute - starts[j]))
    expected = [(j, s) for j, c in enumerate(counts) for s in range(c)]
    assert sorted(seen) == expected
    # A filler (a share of nothing) only when the zone has fewer sequences than batches.
    slots = layout.batches_per_rank * world - layout.zone_start
    if layout.zone_sequences >= slots:
        for rank in range(world):
            for k in range(layout.batches_per_rank):
                where = layout.batch_of(rank, k)
                assert not (isinstance(where, TailShare) and where.start == where.stop)


@given(st.integers(0, 50), st.integers(1, 8), st.integers(0, 10))
def test_a_round_is_plain_once_the_round_after_it_is_complete(planned, world, k):
    if round_is_plain(planned, world, k):
        # However the epoch goes on from here, round k is outside the tail zone.
        for extra in range(0, 2 * world + 1):
            layout = epoch_layout(planned + extra, world, lambda j: 1)
            assert (k + 1) * world <= layout.zone_start
