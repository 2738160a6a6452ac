"""Kubernetes-style conditions: set in place, transition time moves only when the status does."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from phalanx.api.models import Condition, TrainingJobStatus
from phalanx.core.model import Event
from phalanx.core.observe import format_time

ADMITTED = "Admitted"
RUNNING = "Running"
RESTARTING = "Restarting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
# The apiserver refuses to create the job's pods (Pod Security, quota, a webhook, an invalid spec):
# the name ReplicaSets use for the same news.
REPLICA_FAILURE = "ReplicaFailure"
# Reconciles of the job fail again and again (an operator bug or an API error); the message has the error.
RECONCILE_ERROR = "ReconcileError"
# A rank of the running gang is much slower than the others (core/health.py); the message names it.
STRAGGLER = "Straggler"
ORDER = (ADMITTED, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED, REPLICA_FAILURE, RECONCILE_ERROR, STRAGGLER)
# Conditions whose becoming True is bad news for the user.
WARNINGS = {FAILED, RESTARTING, REPLICA_FAILURE, RECONCILE_ERROR, STRAGGLER}
# Conditions that are left out while False and never True: absent means False.
ONLY_WHEN_SEEN = (RESTARTING, SUSPENDED, SUCCEEDED, FAILED, REPLICA_FAILURE, RECONCILE_ERROR, STRAGGLER)


def get(status: TrainingJobStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def is_true(status: TrainingJobStatus, type_: str) -> bool:
    c = get(status, type_)
    return c is not None and c.status == "True"


def set_condition(
    status: TrainingJobStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> None:
    flag: Literal["True", "False"] = "True" if value else "False"
    old = get(status, type_)
    if old is None and not value and type_ in ONLY_WHEN_SEEN:
        return  # absent means False; do not clutter status with conditions that never happened
    changed_at = old.last_transition_time if old is not None and old.status == flag else format_time(now)
    new = Condition(
        type=type_,
        status=flag,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=changed_at,
    )
    others = [c for c in status.conditions if c.type != type_]
    status.conditions = sorted([*others, new], key=lambda c: ORDER.index(c.type) if c.type in ORDER else 99)


def transition_events(old: TrainingJobStatus, new: TrainingJobStatus) -> list[Event]:
    """One Event per condition that turned True or changed its reason while True."""
    events = []
    for cond in new.conditions:
        before = get(old, cond.type)
        if cond.status != "True":
            continue
        if before is None or before.status != "True" or before.reason != cond.reason:
            kind = "Warning" if cond.type in WARNINGS else "Normal"
            events.append(Event(kind, cond.reason, cond.message or cond.type))
    return events
