"""The bounded in-flight loop every streaming fill uses: ordered, and never far ahead.

    for result in in_order(plans, start=submit, finish=wait, max_in_flight=4): ...

takes an item from `items` and starts it only while fewer than `max_in_flight` are
started and not yet handed to the consumer, and yields the results in item order. So a
slow consumer stops new work instead of growing a buffer: with max_in_flight 2, while
the consumer holds result 0, items 0 and 1 are started and item 2 waits until it asks
for the next result.

`packer.pipeline.stream_filled` starts Ray tasks with it (`start` submits, `finish`
waits for the result); the service's tests fill in process with the same loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Started = TypeVar("Started")
Result = TypeVar("Result")


def in_order(
    items: Iterable[Item],
    start: Callable[[Item], Started],
    finish: Callable[[Started], Result],
    max_in_flight: int,
) -> Iterator[Result]:
    """`finish(start(item))` for every item, in order, at most `max_in_flight` started
    ahead of the consumer (see the module doc)."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    pending: deque[Started] = deque()
    source = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_in_flight:
            item = next(source, None)
            if item is None:
                exhausted = True
            else:
                pending.append(start(item))
        if not pending:
            return
        yield finish(pending.popleft())
