"""How long a rank waits for its peers in DDP's gradient all-reduce.

DDP keeps the ranks in lockstep, so every rank's step takes as long as the slowest one's: step time
alone cannot say which rank is slow. What differs is where the time goes. DDP launches each
gradient bucket's all-reduce as soon as this rank's backward pass has produced it, and `backward()`
returns once every all-reduce is done; the time between this rank's last gradient being ready and
`backward()` returning is this rank waiting for the others (plus the last bucket's all-reduce). A
slow rank waits little, its peers wait for it. The operator compares the ranks' step time less this
wait (docs/health.md).

The clock is a post-accumulate-grad hook on the model's first parameter: backward produces the
gradients in reverse order of the forward pass, so in a feed-forward model that one comes last.
One Python call and one clock read per step; DDP's own (C++) reducer is untouched, so results are
exactly those without the hook. (A DDP communication hook would see every bucket, but a Python one
replaces DDP's C++ all-reduce path with a Python call and a Python future callback per bucket.)
"""

from __future__ import annotations

import time

import torch
from torch import nn


class AllReduceClock:
    """Times the wait in the gradient all-reduce of one DDP model, one step at a time."""

    def __init__(self) -> None:
        self._ready = 0.0  # perf_counter() when this step's last local gradient was accumulated

    def attach(self, model: nn.Module) -> None:
        """Watch `model`'s first trainable parameter (call before the first backward)."""
        first = next((p for p in model.parameters() if p.requires_grad), None)
        if first is not None:
            first.register_post_accumulate_grad_hook(self._hook)  # type: ignore[no-untyped-call]

    def _hook(self, _param: torch.Tensor) -> None:
        self._ready = time.perf_counter()

    def waited(self, backward_done: float) -> float:
        """Seconds from the last local gradient to `backward_done` (0 when the hook did not fire)."""
        ready, self._ready = self._ready, 0.0
        return max(backward_done - ready, 0.0) if ready else 0.0
