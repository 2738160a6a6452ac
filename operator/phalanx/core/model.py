"""What the core sees of the cluster (views) and what it asks for (a plan)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from phalanx.api.models import TrainingJobSpec, TrainingJobStatus

Manifest = dict[str, Any]
# A job is reconciled at least this often while it waits on a clock (a deadline days away, a TTL): the
# reconcile is level-based, so an early look is harmless, and the delay stays far from timer limits.
MAX_REQUEUE_SECONDS = 3600.0


@dataclass(frozen=True)
class JobView:
    """A TrainingJob as read from the API. `spec` is None when it does not parse."""

    name: str
    namespace: str
    uid: str
    generation: int
    created: datetime
    spec: TrainingJobSpec | None
    spec_error: str | None
    status: TrainingJobStatus
    priority: int = 0  # the PriorityClass value, resolved by the caller
    deleting: bool = False  # deletionTimestamp set: garbage collection owns the pods now
    # Status fields whose current value someone other than the operator wrote (from managedFields):
    # "attempt" and "condition/<Type>" (the condition's status).
    foreign_status: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)  # the job's own metadata.labels
    annotations: Mapping[str, str] = field(default_factory=dict)  # and metadata.annotations


@dataclass(frozen=True)
class PodView:
    """The facts about one of the job's pods that decisions depend on."""

    name: str
    index: int
    attempt: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    gated: bool = False
    node: str | None = None
    terminating: bool = False
    exit_code: int | None = None  # the trainer container's, once terminated
    reason: str | None = None  # terminated reason, pod reason (Evicted) or waiting reason
    message: str | None = None
    disrupted: bool = False  # DisruptionTarget condition: evicted, preempted, node lost
    waiting_reason: str | None = None  # ImagePullBackOff, CrashLoopBackOff, ...
    unschedulable: str | None = None  # the scheduler's message when PodScheduled=False
    replicas: int | None = None  # gang size this pod was created for
    finished_at: str | None = None  # the trainer container's terminated.finishedAt (RFC 3339, seconds)
    ip: str | None = None  # status.podIP, where the trainer serves its metrics
    uid: str = ""  # metadata.uid: deletes carry it as a precondition, so only this very pod goes
    # (resource, device ID, health) of each device the kubelet allocated to the pod's containers
    # (status.containerStatuses[].allocatedResourcesStatus): health is Healthy, Unhealthy or Unknown.
    devices: tuple[tuple[str, str, str], ...] = ()
    # When the trainer container's current run began (state.running or state.terminated startedAt):
    # restartMode InPlace tells the runs of the current attempt from the old gang's by it.
    started_at: str | None = None


class PodRef(NamedTuple):
    """A pod to delete: by name, and only if it is still the pod of this UID."""

    name: str
    uid: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    """Everything one reconcile wants done. Applied by the kopf layer in this order:
    status first (it records intent such as a new attempt), then deletions, then creations."""

    status: TrainingJobStatus
    status_changed: bool = False
    # Only counts and condition messages moved ("3/8 pods running"): the kopf layer may batch such
    # writes; anything else (attempt, a condition's status or reason, times) is written at once.
    progress_only: bool = False
    create: list[Manifest] = field(default_factory=list)
    delete_pods: list[PodRef] = field(default_factory=list)
    # Pods on a lost node: deleted at once (grace 0), since no kubelet is left to finish a graceful
    # delete (core/nodeloss.py).
    force_delete_pods: list[PodRef] = field(default_factory=list)
    # restartMode InPlace: pods moved to the status's attempt (their attempt label), after the status
    # write; their containers then restart where they run (core/inplace.py).
    relabel_pods: list[PodRef] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.5), MAX_REQUEUE_SECONDS)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)
