"""The Lease I/O loop (controller/election.py) over a fake API and a fake clock: when it acts, when it
stops, what a lapse it never saw costs, and what it writes on release."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client

from phalanx.controller.election import Elector
from phalanx.controller.kube import Conflict
from phalanx.core.lease import LeaseSettings

S = LeaseSettings(name="l", namespace="ns", identity="me", lease_duration=15, renew_deadline=10, retry_period=1)


class FakeLeases:
    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.rv = 0
        self.writes: list[dict[str, Any]] = []

    async def read_lease(self, namespace: str, name: str) -> client.V1Lease | None:
        return self.lease

    async def write_lease(self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None) -> str:
        current = str(self.rv) if self.lease is not None else None
        if resource_version != current:
            raise Conflict(name)
        self.rv += 1
        self.writes.append(spec)
        self.lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=name, resource_version=str(self.rv)),
            spec=client.V1LeaseSpec(
                holder_identity=spec["holderIdentity"],
                lease_duration_seconds=spec["leaseDurationSeconds"],
                lease_transitions=spec["leaseTransitions"],
            ),
        )
        return str(self.rv)

    def held_by(self, holder: str) -> None:
        self.rv += 1
        spec = client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15, lease_transitions=0)
        self.lease = client.V1Lease(metadata=client.V1ObjectMeta(name="l", resource_version=str(self.rv)), spec=spec)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector() -> tuple[Elector, FakeLeases, Clock, list[float]]:
    api, clock, acted = FakeLeases(), Clock(), []
    e = Elector(api, S, lambda: acted.append(clock.t), clock=clock)  # type: ignore[arg-type]
    return e, api, clock, acted


def test_acquires_a_missing_lease_and_acts_once() -> None:
    e, api, clock, acted = elector()
    asyncio.run(e.try_once())
    assert e.leading and acted == [1000.0] and api.writes[0]["holderIdentity"] == "me"
    clock.t += 1
    asyncio.run(e.try_once())  # a renew: no second "act now"
    assert acted == [1000.0] and len(api.writes) == 2


def test_waits_for_anothers_lease_to_run_out_on_its_own_clock() -> None:
    e, api, clock, acted = elector()
    api.held_by("other")
    asyncio.run(e.try_once())
    clock.t += 14
    asyncio.run(e.try_once())
    assert not e.leading and not acted and not api.writes
    clock.t += 1  # 15 s unchanged since we first saw it
    asyncio.run(e.try_once())
    assert e.leading and acted and api.writes[-1]["leaseTransitions"] == 1


def test_stops_acting_at_the_renew_deadline_without_any_write() -> None:
    e, _api, clock, _ = elector()
    asyncio.run(e.try_once())
    clock.t += 9.9
    assert e.leading
    clock.t += 0.1
    assert not e.leading  # the API is unreachable, say: nothing needs to succeed for this


def test_a_lapse_noticed_only_at_the_next_renew_still_redoes_everything() -> None:
    """Workers drop what they dequeue while not leading; a renew that lands after the deadline must
    queue every job again even though the loop never saw `leading` false."""
    e, _api, clock, acted = elector()
    asyncio.run(e.try_once())
    clock.t += 12  # a renew that took too long (a loaded machine): we were not leading for 2 s
    asyncio.run(e.try_once())
    assert e.leading and acted == [1000.0, 1012.0]


def test_taken_over_it_stops_at_once() -> None:
    e, api, _clock, _ = elector()
    asyncio.run(e.try_once())
    api.held_by("other")
    asyncio.run(e.try_once())
    assert not e.leading


def test_release_clears_the_holder_and_stops_acting() -> None:
    e, api, clock, _ = elector()
    asyncio.run(e.try_once())
    asyncio.run(e.release())
    assert not e.leading
    assert api.writes[-1]["holderIdentity"] is None and api.writes[-1]["leaseDurationSeconds"] == 1
    other = Elector(api, LeaseSettings(**{**S.__dict__, "identity": "b"}), lambda: None, clock=clock)  # type: ignore[arg-type]
    asyncio.run(other.try_once())
    assert other.leading  # at its first look, no waiting for the lease to run out
