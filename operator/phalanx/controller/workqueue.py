"""A deduplicating work queue with delays, as controller-runtime has: one key is never processed
by two workers at once, and a key added while it is processed runs again afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Hashable


class WorkQueue:
    def __init__(self) -> None:
        self._ready: list[Hashable] = []
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._seq = 0
        self._wake = asyncio.Event()

    def add(self, key: Hashable) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._wake.set()

    def add_after(self, key: Hashable, seconds: float) -> None:
        self._seq += 1
        heapq.heappush(self._delayed, (time.monotonic() + seconds, self._seq, key))
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queued) + len(self._delayed)

    async def get(self) -> Hashable:
        while True:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                self.add(heapq.heappop(self._delayed)[2])
            if self._ready:
                key = self._ready.pop(0)
                self._queued.discard(key)
                self._active.add(key)
                return key
            self._wake.clear()
            timeout = self._delayed[0][0] - now if self._delayed else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)
