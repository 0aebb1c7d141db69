"""The cursor, the Flight ticket, rank striding and batch metadata."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packer.contract.cursor import MAX_WORLD_SIZE, BatchMetadata, Cursor, TicketError
from packer.contract.rank_layout import batches_per_rank, global_batch_index


@st.composite
def cursors(draw):
    world_size = draw(st.integers(1, MAX_WORLD_SIZE))
    rank = draw(st.integers(0, world_size - 1))
    return Cursor(rank, world_size, draw(st.integers(0, 1000)), draw(st.integers(0, 10**6)))


@given(cursors())
def test_ticket_round_trips_to_the_same_cursor(cursor):
    assert Cursor.from_ticket(cursor.to_ticket()) == cursor
    assert Cursor.from_dict(cursor.to_dict()) == cursor


def test_ticket_uses_the_documented_wire_names():
    ticket = json.loads(Cursor(1, 2, 3, 4).to_ticket())
    assert ticket == {"rank": 1, "world_size": 2, "epoch": 3, "start_batch": 4}


@given(st.integers(1, 64), st.integers(0, 500))
def test_ranks_split_every_global_batch_exactly_once(world_size, num_batches):
    per_rank = batches_per_rank(num_batches, world_size)
    seen = sorted(
        global_batch_index(rank, world_size, k)
        for rank in range(world_size)
        for k in range(per_rank)
    )
    # Every real batch once; the rest (past the end) are the padding batches that even
    # the ranks out, fewer than one per rank.
    assert [j for j in seen if j < num_batches] == list(range(num_batches))
    assert len([j for j in seen if j >= num_batches]) < world_size


def test_worked_example_of_seven_batches_over_three_ranks():
    assert [global_batch_index(1, 3, k) for k in range(3)] == [1, 4, 7]
    assert batches_per_rank(7, 3) == 3


def test_cursor_after_a_batch_points_at_the_next_one():
    cursor = Cursor(1, 2, 0, 0)
    metadata = BatchMetadata(epoch=3, batch=7, global_batch=15, rank=1, config_version=2)
    assert cursor.after(metadata) == Cursor(1, 2, 3, 8)
    assert cursor.advanced() == Cursor(1, 2, 0, 1)
    assert Cursor(1, 2, 3, 8).next_epoch() == Cursor(1, 2, 4, 0)


def test_batch_metadata_round_trips():
    metadata = BatchMetadata(epoch=3, batch=7, global_batch=15, rank=1, config_version=2)
    assert BatchMetadata.from_bytes(metadata.to_bytes()) == metadata


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"rank": 0, "world_size": 1}',
        b'{"rank": 0, "world_size": 1, "epoch": 0, "extra": 1}',
    ],
)
def test_metadata_or_ticket_garbage_is_a_clear_error(raw):
    with pytest.raises(TicketError):
        Cursor.from_ticket(raw)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\xff\xfe", "ticket"),
        (b"[" * 100_000 + b"]" * 100_000, "ticket"),  # deep nesting: no RecursionError
        (b'{"rank": 1' + b"1" * 5000 + b"}", "ticket"),  # a 5000-digit integer
        (b'{"rank": 0, "world_size": 2}', "epoch"),
        (b'{"rank": 2, "world_size": 2, "epoch": 0}', "rank"),
        (b'{"rank": 0, "world_size": 0, "epoch": 0}', "world_size"),
        (b'{"rank": 0, "world_size": 1, "epoch": -1}', "epoch"),
        (b'{"rank": 0, "world_size": 1, "epoch": 0, "start_batch": 1.5}', "start_batch"),
        (b'{"rank": true, "world_size": 1, "epoch": 0}', "rank"),
        (b'{"bogus": 0}', "bogus"),
    ],
)
def test_bad_ticket_names_the_field(raw, field):
    with pytest.raises(TicketError) as caught:
        Cursor.from_ticket(raw)
    assert caught.value.field == field
    assert len(str(caught.value)) < 400  # one line, not an echo of the input


def test_bad_metadata_is_a_value_error():
    with pytest.raises(ValueError, match="lacks"):
        BatchMetadata.from_bytes(b'{"epoch": 1}')
