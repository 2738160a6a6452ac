"""Per-job exponential backoff, as controller-runtime's rate limiter has: 0.5 s doubling to 300 s.

One bad job then costs a handful of tries a minute instead of one every two seconds, and the others
never wait for it. A change of the job's spec (a new generation: the user's fix) is tried at once.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass

FIRST_SECONDS = 0.5
CAP_SECONDS = 300.0


@dataclass
class Failing:
    count: int  # failures in a row
    message: str  # the last one's
    generation: int  # of the job when it last failed
    retry_at: float  # monotonic

    @property
    def delay(self) -> float:
        return min(FIRST_SECONDS * 2.0 ** min(self.count - 1, 32), CAP_SECONDS)


class Backoff:
    def __init__(self) -> None:
        self._failing: dict[Hashable, Failing] = {}

    def failed(self, key: Hashable, message: str, generation: int) -> Failing:
        """Count one more failure; the returned entry says how long to wait before the next try."""
        old = self._failing.get(key)
        count = old.count + 1 if old is not None else 1
        entry = Failing(count, message, generation, 0.0)
        entry.retry_at = time.monotonic() + entry.delay
        self._failing[key] = entry
        return entry

    def succeeded(self, key: Hashable) -> bool:
        """Reset the key; True when it had been failing."""
        return self._failing.pop(key, None) is not None

    def get(self, key: Hashable) -> Failing | None:
        return self._failing.get(key)

    def wait_left(self, key: Hashable, generation: int) -> float:
        """Seconds until the key may be tried again; 0 when it may now (or its spec changed since)."""
        entry = self._failing.get(key)
        if entry is None or entry.generation != generation:
            return 0.0
        return max(entry.retry_at - time.monotonic(), 0.0)
