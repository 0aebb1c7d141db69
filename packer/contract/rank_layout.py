"""How an epoch's global batches are dealt to the ranks of a job: rank striding, and the
epoch's tail shared out so that no rank trains on padding the packer did not plan.

Striding: rank r's k-th batch is global batch `k * W + r`. For 7 global batches of full
sequences and 3 ranks, rounds 0 and 1 are plain (rank 0 gets 0 and 3, rank 1 gets 1 and
4, rank 2 gets 2 and 5) and every rank gets `ceil(7 / 3) = 3` batches, so DDP never
waits on a rank that ran out.

The tail: the last round is short (here global batch 6 alone), and sending ranks 1 and 2
all-padding batches there would cost the GPUs a whole batch of padding each. Instead the
sequences of the tail zone are shared out among every rank's last batch: with global
batch 6 holding 8 sequences, ranks 0, 1, 2 get 3, 3 and 2 of them (in global order) as
their batch k = 2. When the last round holds fewer sequences than there are ranks, the
zone takes the round before it too, and its sequences fill the last two batches of every
rank; only when even those are too few (batch_size 1) does a rank get a filler batch of
one all-padding sequence.

So over an epoch every sequence goes to exactly one rank, every rank gets the same count
of batches, a batch never holds more sequences than the planner's batches do, and the
result is a pure function of (the global batches' sequence counts, W): a replay sends the
same batches. The packer service (packer.plan.planner) and a trainer reading a packed
folder (trainer/data.py) both deal batches with `epoch_layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def global_batch_index(rank: int, world_size: int, k: int) -> int:
    """The global batch that is rank `rank`'s k-th: `k * world_size + rank`."""
    return k * world_size + rank


def batches_per_rank(num_batches: int, world_size: int) -> int:
    """How many batches each rank gets from `num_batches` global ones: ceil(B / W)."""
    return -(-num_batches // world_size)


@dataclass(frozen=True)
class TailShare:
    """A rank's batch in the tail zone: sequences [start, stop) of the zone's sequences,
    concatenated in global batch order from global batch `zone_start` on (start == stop:
    a filler batch of one all-padding sequence)."""

    zone_start: int
    start: int
    stop: int


@dataclass(frozen=True)
class EpochLayout:
    """Which global batch, or which share of the tail, each rank's k-th batch is."""

    num_batches: int  # the epoch's global batches, as planned
    world_size: int
    zone_start: int  # first global batch of the tail zone (num_batches: no zone)
    zone_sequences: int  # sequences of the zone's global batches

    @property
    def batches_per_rank(self) -> int:
        return batches_per_rank(self.num_batches, self.world_size)

    def batch_of(self, rank: int, k: int) -> int | TailShare | None:
        """Rank `rank`'s batch k: a global batch index, a TailShare, or None past the end."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must lie in [0, {self.world_size}), got {rank}")
        if k >= self.batches_per_rank:
            return None
        j = global_batch_index(rank, self.world_size, k)
        if j < self.zone_start:
            return j
        slots = self.batches_per_rank * self.world_size - self.zone_start
        slot = j - self.zone_start  # slots are dealt like batches: round by round
        base, extra = divmod(self.zone_sequences, slots)
        start = slot * base + min(slot, extra)
        return TailShare(self.zone_start, start, start + base + (1 if slot < extra else 0))


def epoch_layout(
    num_batches: int, world_size: int, sequences_in: Callable[[int], int], share: bool = True
) -> EpochLayout:
    """The layout of an epoch of `num_batches` global batches over `world_size` ranks;
    `sequences_in(j)` is the number of sequences of global batch j (asked only for the
    last two rounds). `share=False` keeps the tail as it is (padding batches past the
    end), for a zone whose batches cannot be mixed (the planner's config versions).

    For 7 batches, 3 ranks and `sequences_in(6) == 8`: zone_start 6, zone_sequences 8.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    rounds = batches_per_rank(num_batches, world_size)
    if not share or num_batches % world_size == 0:
        return EpochLayout(num_batches, world_size, num_batches, 0)
    zone_start = (rounds - 1) * world_size
    tail = sum(sequences_in(j) for j in range(zone_start, num_batches))
    if tail < world_size and rounds > 1:  # too few for a sequence per rank: one more round
        zone_start -= world_size
        tail += sum(sequences_in(j) for j in range(zone_start, zone_start + world_size))
    return EpochLayout(num_batches, world_size, zone_start, tail)


def round_is_plain(num_planned: int, world_size: int, k: int) -> bool:
    """Whether round k is outside any tail zone, knowing only that at least
    `num_planned` global batches exist: true once round k + 1 is complete (the zone is at
    most the last two rounds of an epoch that does not end on a full round)."""
    return num_planned >= (k + 2) * world_size
