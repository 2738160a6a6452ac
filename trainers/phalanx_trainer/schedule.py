"""When to save: every N steps and/or every T seconds (PHALANX_CHECKPOINT_INTERVAL_SECONDS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SaveSchedule:
    every_steps: int | None = None
    interval_seconds: float | None = None
    clock: Callable[[], float] = time.monotonic  # vDSO on Linux: no syscall per step
    _last_save: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError("every_steps must be >= 1")
        if self.interval_seconds is not None and self.interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0")
        self._last_save = self.clock()

    @property
    def enabled(self) -> bool:
        return self.every_steps is not None or self.interval_seconds is not None

    def step_due(self, step: int) -> bool:
        """Due by step count: the same answer on every rank, so it needs no agreement."""
        return self.every_steps is not None and step % self.every_steps == 0

    def time_due(self) -> bool:
        """Due by wall time: a local answer; ranks that must save together have to agree on it."""
        return self.interval_seconds is not None and self.clock() - self._last_save >= self.interval_seconds

    def mark_saved(self) -> None:
        self._last_save = self.clock()
