"""SIGTERM handling: remember that termination was asked for; the training loop acts on it.

Kubernetes sends SIGTERM, waits terminationGracePeriodSeconds, then SIGKILLs. The handler only
sets a flag (async-signal-safe, and the step in flight finishes normally); the loop then agrees
with its peers on a step to stop at, the checkpoint owner saves, and every process exits
EXIT_PREEMPTED so the operator treats the gang restart as retryable.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any


class PreemptionWatcher:
    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        self._signals = signals
        self._previous: dict[signal.Signals, Any] = {}
        self.requested = False
        self.requested_at: float | None = None  # time.monotonic() of the first signal

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested_at = time.monotonic()
        self.requested = True

    def install(self) -> PreemptionWatcher:
        # signal.signal only works in the main thread; elsewhere (e.g. a notebook worker thread)
        # the flag can still be set by calling request().
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def request(self) -> None:
        """Ask for a preemption stop without a signal (tests, or a platform notice)."""
        self._handle(signal.SIGTERM, None)

    def __enter__(self) -> PreemptionWatcher:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()
