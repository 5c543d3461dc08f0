"""A deterministic distributed sampler whose state (epoch, position) resumes a run exactly.

Epoch ``e`` visits ``permutation(seed, e)`` of the dataset (or the identity when ``shuffle=False``); rank ``r``
of ``world_size`` takes every ``world_size``-th index starting at ``r``. With ``drop_last`` the tail that does
not divide evenly is dropped; otherwise the permutation is padded by wrapping around, so every rank gets the
same number of indices. ``position`` counts the indices this rank has consumed in the current epoch.

Usage: ``for i in sampler`` yields from ``position`` to the end of the epoch, then moves to the next epoch.
Save ``sampler.state_dict(consumed=n)`` with the number of samples the trainer actually consumed this epoch
when a DataLoader prefetches ahead of training (default: what the sampler yielded).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class DistributedSampler:
    def __init__(
        self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = True
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if n < world_size and drop_last:
            raise ValueError(f"{n} samples cannot feed {world_size} ranks with drop_last")
        self.n, self.rank, self.world_size, self.seed = n, rank, world_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        """Indices per rank per epoch."""
        return self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch`` (int64 [len(self)])."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = len(self) * self.world_size
        order = np.resize(order, total) if total > self.n else order[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        idx = self.indices(self.epoch)
        while self.position < len(idx):
            i = int(idx[self.position])
            self.position += 1
            yield i
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self, consumed: int | None = None) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position if consumed is None else consumed,
            "seed": self.seed,
            "world_size": self.world_size,
            "n": self.n,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size", "n"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]}, this run has {getattr(self, key)}: "
                    "the resumed run would not see the same data"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
