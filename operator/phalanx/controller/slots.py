"""A bounded number of API calls in flight, handed out by priority (then first come, first served).

Under a burst, every call competes for the same few connections. Which call goes first matters:
lifting a gang's gates hands pods to the scheduler now, while one more pod create only adds to the
pile waiting for it. A FIFO pool lets 4,000 creates delay the first ungate by a minute.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

LEASE = -1  # the leader's renew: late, and the leader must stop acting
UNGATE = 0  # hands admitted pods to the scheduler
WRITE = 1  # status writes and deletes: they record and carry out decisions
CREATE = 2  # new objects: the bulk of a burst
EVENT = 3  # best effort: posted once the burst has gone through


class PrioritySlots:
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            self._seq += 1
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, self._seq, granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as we were cancelled: pass the slot on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1
