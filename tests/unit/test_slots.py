"""The API call slots: bounded, and under contention handed out by priority, then in arrival order."""

from __future__ import annotations

import asyncio

from phalanx.controller.slots import CREATE, EVENT, UNGATE, WRITE, PrioritySlots


def test_waiting_calls_get_slots_by_priority_then_arrival_and_never_exceed_the_bound() -> None:
    async def scenario() -> tuple[list[str], int]:
        slots = PrioritySlots(2)
        order: list[str] = []
        in_flight = peak = 0
        gate = asyncio.Event()

        async def call(name: str, priority: int) -> None:
            nonlocal in_flight, peak
            async with slots.slot(priority):
                in_flight += 1
                peak = max(peak, in_flight)
                order.append(name)
                await gate.wait()
                in_flight -= 1

        tasks = [asyncio.create_task(call(f"create-{i}", CREATE)) for i in range(4)]
        await asyncio.sleep(0)  # create-0 and create-1 hold both slots; 2 and 3 wait
        tasks += [
            asyncio.create_task(call("event", EVENT)),
            asyncio.create_task(call("status", WRITE)),
            asyncio.create_task(call("ungate", UNGATE)),
        ]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return order, peak

    order, peak = asyncio.run(scenario())
    assert order == ["create-0", "create-1", "ungate", "status", "create-2", "create-3", "event"]
    assert peak == 2


def test_a_cancelled_waiter_does_not_lose_a_slot() -> None:
    async def scenario() -> list[str]:
        slots = PrioritySlots(1)
        got: list[str] = []
        release = asyncio.Event()

        async def call(name: str) -> None:
            async with slots.slot(CREATE):
                got.append(name)
                await release.wait()

        first = asyncio.create_task(call("first"))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(call("doomed"))
        await asyncio.sleep(0)
        doomed.cancel()
        release.set()
        await first
        await asyncio.wait_for(call("later"), timeout=1)
        return got

    assert asyncio.run(scenario()) == ["first", "later"]
