"""The resumable sampler: DistributedSampler's order, mid-epoch resume, world-size changes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DistributedSampler  # noqa: E402

from phalanx_trainer.pytorch.sampler import ResumableDistributedSampler  # noqa: E402

pytestmark = pytest.mark.training


@pytest.mark.parametrize("world", [1, 2, 3])
def test_same_order_as_torch_distributed_sampler(world: int) -> None:
    for rank in range(world):
        ours = ResumableDistributedSampler(101, world, rank, seed=7)
        theirs = DistributedSampler(list(range(101)), num_replicas=world, rank=rank, seed=7, drop_last=True)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)


def test_mid_epoch_resume_continues_exactly() -> None:
    world, batch, consumed_steps = 2, 4, 5
    full = [list(ResumableDistributedSampler(100, world, r, seed=1)) for r in range(world)]
    resumed = []
    for r in range(world):
        s = ResumableDistributedSampler(100, world, r, seed=1)
        s.set_epoch(0, consumed=consumed_steps * batch * world)
        resumed.append(list(s))
    for r in range(world):
        assert resumed[r] == full[r][consumed_steps * batch :]


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 3), (2, 3)])
def test_world_size_change_neither_repeats_nor_skips(old: int, new: int) -> None:
    n, batch, steps = 96, 4, 3
    seen = []
    for r in range(old):  # what `steps` steps at the old size consumed
        seen += list(ResumableDistributedSampler(n, old, r, seed=2))[: steps * batch]
    consumed = steps * batch * old
    rest = []
    for r in range(new):
        s = ResumableDistributedSampler(n, new, r, seed=2)
        s.set_epoch(0, consumed=consumed)
        rest += list(s)
    assert not set(seen) & set(rest)
    assert len(seen) + len(rest) >= n - new + 1  # only the tail that does not split evenly is dropped
    assert sorted(seen + rest) == sorted(set(seen + rest))
