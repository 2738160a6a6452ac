"""The Lease I/O of leader election; the decisions are phalanx.core.lease's.

Every replica runs its watches (warm caches). Until it leads, Kube refuses its writes (Kube.may_write
asks `leading`), the workers drop what they dequeue and the admitter decides nothing. The moment it
acquires the lease, every cached job is queued and the admitter woken: it acts at once, from caches
that are already full. On shutdown (SIGTERM) the leader releases the lease so that a standby takes
over within one retry period instead of waiting for the lease to run out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from phalanx.controller import metrics
from phalanx.controller.kube import Conflict, Kube, api_error_message
from phalanx.core import lease
from phalanx.core.lease import Action, LeaseRecord, LeaseSettings

log = logging.getLogger("phalanx")


def to_record(spec: Any) -> LeaseRecord:
    return LeaseRecord(
        holder=spec.holder_identity or None,
        duration_seconds=int(spec.lease_duration_seconds or 0),
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=int(spec.lease_transitions or 0),
    )


def to_spec(record: LeaseRecord) -> dict[str, Any]:
    def micro(t: datetime | None) -> str | None:
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t else None

    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "acquireTime": micro(record.acquire_time),
        "renewTime": micro(record.renew_time),
        "leaseTransitions": record.transitions,
    }


class Elector:
    def __init__(
        self,
        kube: Kube,
        settings: LeaseSettings,
        on_leading: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.settings, self.on_leading, self.clock = kube, settings, on_leading, clock
        self._renewed: float | None = None  # monotonic time before our last successful write
        self._seen: tuple[str, LeaseRecord] | None = None  # (resourceVersion, record) last read
        self._seen_since = 0.0  # monotonic time we first saw that resourceVersion
        self._was_leading = False

    @property
    def leading(self) -> bool:
        return lease.leading(self._renewed, self.clock(), self.settings)

    async def run(self, ready: asyncio.Event) -> None:
        # Contend only once the caches are full: a new leader acts at once, and must see everything.
        await ready.wait()
        log.info(
            "leader election: lease %s/%s as %s (duration %gs, renew deadline %gs, retry %gs)",
            self.settings.namespace,
            self.settings.name,
            self.settings.identity,
            self.settings.lease_duration,
            self.settings.renew_deadline,
            self.settings.retry_period,
        )
        while True:
            try:
                await self.try_once()
            except Exception as exc:  # the API may be down: keep trying; `leading` lapses by itself
                log.warning("leader election: %s", api_error_message(exc))
            self._transition()
            await asyncio.sleep(self.settings.retry_period)

    def _transition(self) -> None:
        now_leading = self.leading
        if now_leading != self._was_leading:
            self._was_leading = now_leading
            metrics.LEADER.set(1 if now_leading else 0)
            if now_leading:
                log.info("leader election: %s leads now; acting", self.settings.identity)
                self.on_leading()
            else:
                log.warning("leader election: %s is no longer the leader; standing by", self.settings.identity)

    async def try_once(self) -> None:
        s = self.settings
        current = await self.kube.read_lease(s.namespace, s.name)
        now = self.clock()
        rv = str(current.metadata.resource_version) if current is not None else None
        record = to_record(current.spec) if current is not None else None
        if rv is None or record is None:
            self._seen = None
        elif self._seen is None or self._seen[0] != rv:
            self._seen, self._seen_since = (rv, record), now
        decision = lease.decide(s.identity, record, now - self._seen_since, datetime.now(UTC), s)
        if decision.action is Action.WAIT:
            if self._renewed is not None and record is not None and record.holder != s.identity:
                self._renewed = None  # taken over (our lease ran out): stop acting now
            return
        assert decision.record is not None
        before, last = self.clock(), self._renewed
        try:
            new_rv = await self.kube.write_lease(s.namespace, s.name, to_spec(decision.record), rv)
        except Conflict:
            return  # someone wrote first: judge again from a fresh read next period
        self._renewed = before
        self._seen, self._seen_since = (new_rv, decision.record), before
        if not lease.leading(last, self.clock(), s):
            # Not leading for a moment (a slow renew under load), even if no one saw it: whatever the
            # workers and the admitter dropped meanwhile is redone, as after any acquisition.
            self._was_leading = False
        self._transition()

    async def release(self) -> None:
        """On shutdown: give the lease up so that a standby takes over at once."""
        if not self.leading:
            return
        self._renewed = None  # nothing more is written from here, whatever happens below
        self._transition()
        s = self.settings
        try:
            current = await self.kube.read_lease(s.namespace, s.name)
            if current is None:
                return
            record = lease.released(s.identity, to_record(current.spec), datetime.now(UTC))
            if record is not None:
                await self.kube.write_lease(
                    s.namespace, s.name, to_spec(record), str(current.metadata.resource_version)
                )
                log.info("leader election: released lease %s/%s", s.namespace, s.name)
        except Exception as exc:  # the standby then waits for the lease to run out
            log.warning("leader election: lease not released: %s", api_error_message(exc))
