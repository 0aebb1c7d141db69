"""The epoch's shuffle: a seeded permutation of an index's positions, computed per place.

No permutation array: epoch e's order is the Feistel network `EpochOrder.mix`, a seeded
bijection of [0, 2^b) (b bits cover the index's n positions), applied to the values 0,
1, 2, ... in turn, keeping those that land below n. So the shuffle costs no memory per
image, a window's images are found from where the last one stopped without the windows
before it, and every place of the epoch is as likely for every image: the images of one
WebDataset shard (neighbouring rows of the index) spread over the whole epoch.

For n = 5 (b = 3, values 0..7), if mix maps 0..7 to [6, 2, 0, 7, 4, 1, 5, 3], the
epoch's order is [2, 0, 4, 1, 3]: 6, 7 and 5 fall outside and are skipped. At most half
of the values are skipped, since 2^b < 2n.
"""

from __future__ import annotations

import numpy as np

from packer.plan.sampling import splitmix64

# Four rounds make a pseudo-random permutation (Luby-Rackoff); six leave a margin.
_ROUNDS = 6
_STREAM_EPOCH_ORDER = 0x5EED


class EpochOrder:
    """The order of an epoch over n index positions: mix(0), mix(1), ... below n."""

    def __init__(self, size: int, seed: int, epoch: int) -> None:
        if size < 0:
            raise ValueError(f"size must be non-negative, got {size}")
        self.size = size
        bits = max(size - 1, 1).bit_length()
        self.domain = 1 << bits  # the values mix permutes: at most 2 * size
        # Alternating (unbalanced) Feistel rounds: the high part is xored with a hash of
        # the low part, then the low part with a hash of the high part, and so on; each
        # round is a bijection, so their composition is one.
        self._low_bits = np.uint64(bits - bits // 2)
        self._low_mask = np.uint64((1 << (bits - bits // 2)) - 1)
        self._high_mask = np.uint64((1 << (bits // 2)) - 1)
        rng = np.random.default_rng([seed, epoch, _STREAM_EPOCH_ORDER])
        self._round_keys = rng.integers(0, 1 << 63, _ROUNDS, dtype=np.uint64)

    def mix(self, values: np.ndarray) -> np.ndarray:
        """The permuted values (int64, in [0, domain)) of values in [0, domain)."""
        high = values.astype(np.uint64) >> self._low_bits
        low = values.astype(np.uint64) & self._low_mask
        with np.errstate(over="ignore"):
            for n, key in enumerate(self._round_keys):
                if n % 2 == 0:
                    high = high ^ (splitmix64(low ^ key) & self._high_mask)
                else:
                    low = low ^ (splitmix64(high ^ key) & self._low_mask)
        return ((high << self._low_bits) | low).astype(np.int64)

    def span(self, start: int, stop: int) -> np.ndarray:
        """mix of the values start..stop-1 (clipped to the domain): the positions those
        places of the order hold, with the ones at or past `size` left for the caller to
        skip."""
        stop = min(stop, self.domain)
        if start >= stop:
            return np.zeros(0, np.int64)
        return self.mix(np.arange(start, stop, dtype=np.uint64))
