"""A deterministic, resumable order over a random-access dataset, for drawing RL prompts.

The whole state is one integer, `position`: the number of examples drawn so far. Example number
p is `source[perm_e[p mod n]]` with e = p // n the epoch and perm_e a permutation seeded by
(seed, e), so any position can be restored exactly (checkpoint `sampler.position`, pass it back
as `position=`), every example is seen once per epoch, and batches may cross epoch boundaries.
In multi-host training every host builds the same sampler and takes its slice of each global
batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class PromptSampler:
    """Draws examples from `source` in a seeded order, epoch after epoch.

    Args:
      source: any sequence with `len` and `__getitem__` (e.g. `load_task(...)`).
      seed: seeds the per-epoch permutations.
      shuffle: False keeps the source order every epoch.
      position: where to start (a value of `sampler.position` from a checkpoint).
    """

    def __init__(self, source: Sequence, *, seed: int = 0, shuffle: bool = True,
                 position: int = 0):
        if len(source) == 0:
            raise ValueError("cannot sample from an empty source")
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.source, self.seed, self.shuffle = source, seed, shuffle
        self.position = int(position)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        """The epoch the next example comes from."""
        return self.position // len(self.source)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            n = len(self.source)
            perm = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                    else np.arange(n))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # keep 2
            self._perms[epoch] = perm
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Source indices of examples start .. start+count-1 of the order (no state change)."""
        epochs, offsets = np.divmod(np.arange(start, start + count), len(self.source))
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            out[rows] = self._permutation(int(epoch))[offsets[rows]]
        return out

    def next_indices(self, count: int) -> np.ndarray:
        """The next `count` source indices; advances `position`."""
        out = self.indices(self.position, count)
        self.position += count
        return out

    def next_batch(self, count: int) -> list[Any]:
        """The next `count` examples; advances `position`."""
        return [self.source[int(i)] for i in self.next_indices(count)]

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        return self.next_batch(1)[0]
