"""Leader election on a coordination.k8s.io Lease: the decisions, without I/O (as client-go's leaderelection).

One operator replica leads and acts; the others keep their caches warm and take over when the
leader's lease runs out, or at once when the leader released it on shutdown.

Clocks: a replica never compares its own clock with the times another replica wrote. It judges a
lease held by someone else by how long, on its own monotonic clock, it has seen that lease
unchanged; the leader judges itself by how long ago it last renewed. The leader stops acting
`renew_deadline` after its last successful renew, which is strictly before any standby can take over
(`lease_duration` after it saw that renew), so two replicas never act at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum

from phalanx.core.settings import ConfigError, env_number

ENV_ENABLED = "PHALANX_LEADER_ELECTION"
ENV_NAME = "PHALANX_LEASE_NAME"
ENV_NAMESPACE = "PHALANX_LEASE_NAMESPACE"
ENV_IDENTITY = "PHALANX_POD_NAME"
ENV_DURATION = "PHALANX_LEASE_DURATION_SECONDS"
ENV_RENEW = "PHALANX_LEASE_RENEW_DEADLINE_SECONDS"
ENV_RETRY = "PHALANX_LEASE_RETRY_PERIOD_SECONDS"
DEFAULT_NAME = "phalanx-operator"
# What a leader that shuts down leaves as the lease's duration: the standby needs no wait at all.
RELEASED_DURATION_SECONDS = 1


class LeaseConfigError(ConfigError):
    """The leader-election settings are wrong; the operator refuses to start."""


@dataclass(frozen=True)
class LeaseSettings:
    """client-go's defaults are 15/10/2 s; the retry period here is 1 s so that a standby notices a
    released lease within a second (one GET a second per standby, one renew a second by the leader)."""

    enabled: bool = True
    name: str = DEFAULT_NAME
    namespace: str = "default"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 1.0

    def __post_init__(self) -> None:
        if not self.retry_period > 0:
            raise LeaseConfigError(f"{ENV_RETRY}={self.retry_period:g} must be greater than 0")
        if not self.renew_deadline > self.retry_period:
            raise LeaseConfigError(
                f"{ENV_RENEW}={self.renew_deadline:g} must be greater than {ENV_RETRY}={self.retry_period:g} "
                "(the leader retries its renew every retry period until the deadline)"
            )
        if not self.lease_duration > self.renew_deadline:
            raise LeaseConfigError(
                f"{ENV_DURATION}={self.lease_duration:g} must be greater than {ENV_RENEW}={self.renew_deadline:g} "
                "(a leader that cannot renew must stop acting before a standby may take over)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str], default_namespace: str = "default") -> LeaseSettings:
        enabled = (env.get(ENV_ENABLED) or "true").strip().lower()
        if enabled not in ("true", "false"):
            raise LeaseConfigError(f"{ENV_ENABLED}={env.get(ENV_ENABLED)!r} is not true or false")
        name = env.get(ENV_NAME) or DEFAULT_NAME
        if not _dns_subdomain(name):
            raise LeaseConfigError(f"{ENV_NAME}={name!r} is not a valid object name (a DNS subdomain)")
        return cls(
            enabled=enabled == "true",
            name=name,
            namespace=env.get(ENV_NAMESPACE) or default_namespace,
            identity=env.get(ENV_IDENTITY) or "",
            lease_duration=_seconds(env, ENV_DURATION, cls.lease_duration),
            renew_deadline=_seconds(env, ENV_RENEW, cls.renew_deadline),
            retry_period=_seconds(env, ENV_RETRY, cls.retry_period),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return env_number(env, name, default, 0, 3600)  # more than 0: LeaseSettings checks the order


def _dns_subdomain(name: str) -> bool:
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(
            label and label[0].isalnum() and label[-1].isalnum() and all(c.isalnum() or c == "-" for c in label)
            for label in labels
        )
        and name == name.lower()
    )


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as read or to be written."""

    holder: str | None
    duration_seconds: int
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


class Action(Enum):
    CREATE = "create"  # no Lease yet: create it, held by us
    UPDATE = "update"  # write `record` (renew ours, or take over), only if the Lease is unchanged since read
    WAIT = "wait"  # someone else holds a lease that has not run out


@dataclass(frozen=True)
class Decision:
    action: Action
    record: LeaseRecord | None = None

    @property
    def acquiring(self) -> bool:
        return self.action is not Action.WAIT


def decide(
    identity: str,
    current: LeaseRecord | None,
    unchanged_for: float,
    now: datetime,
    settings: LeaseSettings,
) -> Decision:
    """What to do with the Lease. `unchanged_for`: seconds (our monotonic clock) since we first saw
    `current` as it is now; `now`: the wall time written into the record."""
    duration = max(1, math.ceil(settings.lease_duration))  # never shorter than the setting
    if current is None:
        return Decision(Action.CREATE, LeaseRecord(identity, duration, now, now, 0))
    if current.holder == identity:
        return Decision(Action.UPDATE, replace(current, duration_seconds=duration, renew_time=now))
    if current.holder and unchanged_for < current.duration_seconds:
        return Decision(Action.WAIT)
    # Released (no holder) or run out: take it over.
    return Decision(Action.UPDATE, LeaseRecord(identity, duration, now, now, current.transitions + 1))


def released(identity: str, current: LeaseRecord | None, now: datetime) -> LeaseRecord | None:
    """The record a leader shutting down writes so that a standby takes over at once; None when the
    lease is not ours (someone took it over already: nothing of ours to release)."""
    if current is None or current.holder != identity:
        return None
    return replace(current, holder=None, duration_seconds=RELEASED_DURATION_SECONDS, renew_time=now)


def leading(renewed_at: float | None, now: float, settings: LeaseSettings) -> bool:
    """Whether we may act: we renewed (monotonic `renewed_at`, taken before the write was sent)
    less than `renew_deadline` ago."""
    return renewed_at is not None and now - renewed_at < settings.renew_deadline
