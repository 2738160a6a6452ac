"""A DistributedSampler that can start mid-epoch, also under a different world size.

Same order as torch's DistributedSampler(shuffle=..., seed=..., drop_last=True): the epoch's
permutation comes from a generator seeded with seed + epoch and does not depend on the world size;
rank r takes positions r, r + W, r + 2W, ... After S steps of per-rank batch b the job has consumed
exactly positions [0, S*W*b) of the permutation, so a resumed job skips that many positions and
deals the rest round-robin again. With the same world size this reproduces the uninterrupted
run's batches exactly; with a different one no sample of the epoch is skipped or repeated.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    def __init__(self, dataset_len: int, num_replicas: int, rank: int, *, seed: int = 0, shuffle: bool = True) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0  # positions of this epoch's permutation already used by the whole job

    def set_epoch(self, epoch: int, consumed: int = 0) -> None:
        if not 0 <= consumed <= self.dataset_len:
            raise ValueError(f"consumed {consumed} outside 0..{self.dataset_len}")
        self.epoch = epoch
        self.consumed = consumed

    def __len__(self) -> int:
        return (self.dataset_len - self.consumed) // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g)
        else:
            order = torch.arange(self.dataset_len)
        usable = len(self) * self.num_replicas  # drop the tail so every rank gets the same count
        mine = order[self.consumed : self.consumed + usable][self.rank :: self.num_replicas]
        return iter(mine.tolist())
