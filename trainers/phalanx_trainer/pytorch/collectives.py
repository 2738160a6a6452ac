"""How long a rank waits for its peers in DDP's gradient all-reduce.

DDP keeps the ranks in lockstep, so every rank's step takes as long as the slowest one's: step time
alone cannot say which rank is slow. What differs is where the time goes. DDP hands each gradient
bucket to the communication hook the moment this rank's backward pass has produced it, and
`backward()` returns once every bucket's all-reduce is done; the time between the last bucket
being ready and `backward()` returning is this rank waiting for the others (plus the all-reduce
itself). A slow rank waits little, its peers wait for it. The operator compares the ranks' step
time less this wait (docs/health.md).

The hook is torch's own `allreduce_hook` (the reference hook that keeps DDP's results unchanged)
with one clock read in front of it; cost: one Python call per bucket per step.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as real types.
import time
from typing import Any

import torch
from torch._C._distributed_c10d import GradBucket  # what torch.distributed re-exports, typed
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel


class AllReduceClock:
    """Times the wait in the gradient all-reduce of one DDP model, one step at a time."""

    def __init__(self) -> None:
        self._ready = 0.0  # perf_counter() when the step's last gradient bucket was handed over

    def attach(self, ddp: DistributedDataParallel, process_group: Any = None) -> None:
        """Reduce `ddp`'s gradients through the timing hook (once, before its first backward)."""
        ddp.register_comm_hook(process_group, self._hook)

    def _hook(self, process_group: Any, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        self._ready = time.perf_counter()
        return default_hooks.allreduce_hook(process_group, bucket)

    def waited(self, backward_done: float) -> float:
        """Seconds from the last bucket's hand-over to `backward_done` (0 when no bucket was reduced)."""
        ready, self._ready = self._ready, 0.0
        return max(backward_done - ready, 0.0) if ready else 0.0
