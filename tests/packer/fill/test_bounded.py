"""The bounded in-flight loop (packer/fill/bounded.py): in order, never far ahead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packer.fill.bounded import in_order


def test_a_consumer_that_took_one_result_holds_the_start_of_item_two_back():
    started: list[int] = []
    results = in_order(range(10), lambda i: started.append(i) or i, lambda i: i * i, 2)
    assert next(results) == 0
    assert started == [0, 1]  # 1 in flight beside the one taken; 2 waits for the consumer
    assert next(results) == 1
    assert started == [0, 1, 2]


@given(st.lists(st.integers(), max_size=30), st.integers(1, 8))
def test_results_come_in_item_order_whatever_the_bound(items, bound):
    in_flight = []

    def start(item):
        in_flight.append(item)
        assert len(in_flight) <= bound
        return item

    def finish(item):
        in_flight.remove(item) if item in in_flight else None
        return item

    assert list(in_order(items, start, finish, bound)) == items


def test_a_bound_below_one_is_refused():
    with pytest.raises(ValueError, match="max_in_flight"):
        next(in_order([1], lambda i: i, lambda i: i, 0))
