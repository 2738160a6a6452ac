"""Admission by Kueue: one Kueue Workload per attempt, as Kueue's own job framework makes for its kinds.

A job with spec.scheduling.queueName gets its pods created with the gang's scheduling gate, and a
Workload whose single pod set is the whole gang (count = replicas, the pod template's requests, GPUs
included), owned by the TrainingJob. Kueue's controllers decide: once the Workload is admitted, the
flavor Kueue assigned (its ResourceFlavor's node labels and tolerations) is added to the gated pods
and the gates are lifted, all pods or none. Until then the job's status carries Kueue's own reason
and message. Workloads of older attempts, and of a finished job, are deleted: that returns their
quota to the ClusterQueue.

Pure: the job's gang, the Workloads that exist and the ResourceFlavors in; one KueueStep out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phalanx.core import names
from phalanx.core.gang import Gang
from phalanx.core.model import Manifest
from phalanx.core.pods import build_pod, job_labels, owner_reference

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
POD_SET = "trainers"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # what Kueue's own integrations label their Workloads with
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
FINISHED = "Finished"
PODS_READY = "PodsReady"
EVICTED = "Evicted"
WAITING = "WaitingForKueue"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # Kueue names the preemptor's job by it in its eviction message
# Kueue's Evicted reasons (kueue.x-k8s.io/v1beta2): a preemption does not count against backoffLimit; a
# readiness timeout (waitForPodsReady) does, since each attempt's new Workload starts Kueue's own
# requeue count afresh (docs/scheduling.md).
PREEMPTED = "Preempted"
PODS_READY_TIMEOUT = "PodsReadyTimeout"
# Kueue's jobs take a WorkloadPriorityClass from this label on the job (its jobframework reads it the same
# way); it outranks the pods' PriorityClass for the Workload's priority, as in Kueue.
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
PRIORITY_CLASS_NOT_FOUND = "WorkloadPriorityClassNotFound"
# On a MultiKueue worker cluster the job is Kueue's copy, which names the Workload Kueue copied for it: in
# this annotation (Kueue 0.19's default, feature gate WorkloadIdentifierAnnotations), or in a label of the
# same key (older Kueue, or the gate off). Kueue itself reads the annotation first.
PREBUILT = "kueue.x-k8s.io/prebuilt-workload-name"


@dataclass(frozen=True)
class WorkloadPriority:
    """What a Workload's spec.priorityClassRef names and spec.priority holds: a WorkloadPriorityClass (the
    job's kueue.x-k8s.io/priority-class label) or the pods' PriorityClass, with the class's value."""

    group: str
    kind: str
    name: str
    value: int

    @classmethod
    def workload_class(cls, name: str, value: int) -> WorkloadPriority:
        return cls(GROUP, "WorkloadPriorityClass", name, value)

    @classmethod
    def pod_class(cls, name: str, value: int) -> WorkloadPriority:
        return cls("scheduling.k8s.io", "PriorityClass", name, value)


def prebuilt_workload(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str | None:
    """The Workload MultiKueue made for this copy of a job on a worker cluster, if it is one."""
    return annotations.get(PREBUILT) or labels.get(PREBUILT) or None


def uses_kueue(gang: Gang) -> bool:
    return bool(gang.spec.scheduling.queue_name)


def workload_name(job: str, attempt: int) -> str:
    """<job>-a<attempt>, cut to a DNS label (Kueue copies the name into labels of its own)."""
    return names.attempt_name(job, attempt)


def build_workload(gang: Gang, priority: WorkloadPriority | None = None, name: str | None = None) -> Manifest:
    """The attempt's Workload: one pod set of `replicas` pods shaped like rank 0 (every rank asks for the
    same resources), without the scheduling gate: Kueue reads the template for its requests only.
    `priority`: the job's WorkloadPriorityClass, else the PriorityClass of spec.scheduling.priorityClassName,
    with its value. Kueue orders and preempts by spec.priority and does not fill it in itself: its job
    framework copies it from the class, as here. `name`: the Workload's name (default <job>-a<attempt>)."""
    pod = build_pod(gang, 0)
    spec = copy.deepcopy(pod["spec"])
    spec.pop("schedulingGates", None)
    for per_rank in ("hostname", "subdomain"):
        spec.pop(per_rank, None)
    labels = {**job_labels(gang), names.LABEL_ATTEMPT: str(gang.attempt)}
    queue = gang.spec.scheduling.queue_name
    assert queue is not None
    extra: dict[str, Any] = {}
    if priority is not None:
        extra = {
            "priorityClassRef": {"group": priority.group, "kind": priority.kind, "name": priority.name},
            "priority": priority.value,
        }
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": name or workload_name(gang.job, gang.attempt),
            "namespace": gang.namespace,
            "labels": {**labels, QUEUE_LABEL: queue, JOB_UID_LABEL: gang.uid},
            "ownerReferences": [owner_reference(gang)],
        },
        "spec": {
            "queueName": queue,
            "podSets": [
                {
                    "name": POD_SET,
                    "count": gang.replicas,
                    "template": {"metadata": {"labels": labels}, "spec": spec},
                }
            ],
            **extra,
        },
    }


@dataclass(frozen=True)
class WorkloadView:
    """What admission needs of one Workload."""

    name: str
    attempt: int | None
    admitted: bool  # condition Admitted=True (quota reserved and every admission check passed)
    flavors: Mapping[str, str]  # resource -> ResourceFlavor Kueue assigned to the pod set
    reason: str  # of the condition that tells best why it is not admitted (QuotaReserved first)
    message: str
    evicted: str | None = None  # Evicted=True: Kueue's message
    evicted_reason: str = ""  # Evicted=True: Kueue's reason (Preempted, PodsReadyTimeout, ...)
    finished: bool = False
    pods_ready: bool = False  # PodsReady=True, which phalanx reports as Kueue's job framework does


def workload_view(body: Mapping[str, Any]) -> WorkloadView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    try:
        attempt: int | None = int((meta.get("labels") or {}).get(names.LABEL_ATTEMPT, ""))
    except ValueError:
        attempt = None
    flavors: dict[str, str] = {}
    admission = status.get("admission") or {}
    for assignment in admission.get("podSetAssignments") or []:
        if assignment.get("name") == POD_SET:
            flavors = {str(k): str(v) for k, v in (assignment.get("flavors") or {}).items()}
    admitted = (conds.get(ADMITTED) or {}).get("status") == "True" and bool(admission)
    telling = next(
        (conds[t] for t in (QUOTA_RESERVED, ADMITTED) if t in conds and conds[t].get("status") != "True"),
        conds.get(ADMITTED) or {},
    )
    evicted = conds.get(EVICTED) or {}
    return WorkloadView(
        name=str(meta.get("name", "")),
        attempt=attempt,
        admitted=admitted,
        flavors=flavors,
        reason=str(telling.get("reason") or "Pending"),
        message=str(telling.get("message") or "Kueue has not looked at the Workload yet"),
        evicted=str(evicted.get("message") or "") if evicted.get("status") == "True" else None,
        evicted_reason=str(evicted.get("reason") or "") if evicted.get("status") == "True" else "",
        finished=(conds.get(FINISHED) or {}).get("status") == "True",
        pods_ready=(conds.get(PODS_READY) or {}).get("status") == "True",
    )


@dataclass(frozen=True)
class FlavorPlacement:
    """A ResourceFlavor's node labels and tolerations: what the gang's pods must get to land on it."""

    node_labels: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...] = ()


def flavor_placement(body: Mapping[str, Any]) -> FlavorPlacement:
    spec = body.get("spec") or {}
    return FlavorPlacement(
        node_labels={str(k): str(v) for k, v in (spec.get("nodeLabels") or {}).items()},
        tolerations=tuple(spec.get("tolerations") or ()),
    )


@dataclass(frozen=True)
class KueueNote:
    """Why Kueue keeps the job waiting, in Kueue's words."""

    reason: str
    message: str


@dataclass(frozen=True)
class KueueEviction:
    """Kueue evicted the attempt's Workload (Evicted=True): the gang must stop and queue again."""

    attempt: int
    workload: str
    reason: str  # Kueue's Evicted reason, verbatim
    message: str  # Kueue's Evicted message, verbatim

    @property
    def preempted(self) -> bool:
        return self.reason == PREEMPTED

    def preemptor_uid(self) -> str | None:
        """The preemptor's job UID from Kueue's message (`Preempted to accommodate a workload (UID: ...,
        JobUID: ...) ...`), when Kueue knew it."""
        m = re.search(r"JobUID: ([0-9A-Za-z-]+)\)", self.message)
        return m.group(1) if m and m.group(1) != "UNKNOWN" else None


@dataclass
class KueueStep:
    create: Manifest | None = None  # the attempt's Workload, when it does not exist yet
    delete: list[str] = field(default_factory=list)  # Workloads of other attempts
    note: KueueNote | None = None  # set while not admitted
    # Set once admitted and every flavor Kueue assigned is known: added to the gated pods as they are ungated.
    placement: FlavorPlacement | None = None
    flavors: tuple[str, ...] = ()  # the ResourceFlavors assigned (for the status message)
    # The gang runs and Kueue does not know yet: with waitForPodsReady (Kueue's default since 0.19) it
    # evicts an admitted Workload whose PodsReady stays False past its timeout.
    report_ready: str | None = None
    # Kueue evicted the current attempt's Workload (preempted it, or its pods were not ready in time).
    evicted: KueueEviction | None = None
    # The job ended and its Workload is MultiKueue's copy (`prebuilt`): marked Finished, never deleted, so
    # the manager cluster sees it finish.
    finish: str | None = None


def decide(
    gang: Gang,
    workloads: Sequence[WorkloadView],
    flavors: Mapping[str, FlavorPlacement],
    finished: bool = False,
    running: bool = False,
    live_attempts: frozenset[int] = frozenset(),
    priority: WorkloadPriority | None = None,
    missing_class: str | None = None,
    prebuilt: str | None = None,
    completed: bool = False,
) -> KueueStep:
    """finished: the job has ended, so no Workload of it should hold quota any more; running: all pods of
    the attempt run (the job's Running condition); live_attempts: the attempts that still have pods not
    finished (terminating ones included). An older attempt's Workload keeps its quota until its pods
    are gone, as Kueue's job framework clears an evicted Workload's admission only once the job is no
    longer active: a preempted gang saving its checkpoint still holds its GPUs.

    missing_class: the WorkloadPriorityClass the job's label names does not exist, so no Workload is made.
    prebuilt: the Workload Kueue's MultiKueue created for this job on a worker cluster (prebuilt_workload()).
    It serves every attempt, is never created or deleted here (the manager cluster watches it) and is
    marked Finished once the job has `completed` (Succeeded or Failed)."""
    step = KueueStep()
    mine = prebuilt or workload_name(gang.job, gang.attempt)
    step.delete = [
        w.name
        for w in workloads
        if w.name != prebuilt
        and (finished or (w.name != mine and (w.attempt is None or w.attempt not in live_attempts)))
    ]
    current = next((w for w in workloads if w.name == mine), None)
    if finished:
        if prebuilt and completed and current is not None and not current.finished:
            step.finish = prebuilt
        return step
    queue = gang.spec.scheduling.queue_name
    if current is not None and current.evicted is not None:
        note = KueueNote(current.evicted_reason or EVICTED, f"Kueue evicted Workload {current.name}: {current.evicted}")
        if prebuilt:
            # MultiKueue's manager answers an eviction on a worker: it takes the job back and dispatches it
            # again (this copy is deleted), so the gang is not restarted here.
            step.note = note
            return step
        step.evicted = KueueEviction(gang.attempt, current.name, current.evicted_reason, current.evicted)
        step.note = note
        return step
    if current is None and prebuilt:
        step.note = KueueNote(WAITING, f"waiting for MultiKueue's Workload {prebuilt} (LocalQueue {queue})")
        return step
    if current is None and missing_class:
        step.note = KueueNote(
            PRIORITY_CLASS_NOT_FOUND,
            f"WorkloadPriorityClass {missing_class} (label {PRIORITY_CLASS_LABEL}) does not exist: create it or "
            f"change the label; no Workload is made until then",
        )
        return step
    if current is None:
        step.create = build_workload(gang, priority)
        step.note = KueueNote(WAITING, f"waiting for Kueue: Workload {mine} created in LocalQueue {queue}")
        return step
    if not current.admitted:
        step.note = KueueNote(
            current.reason,
            f"waiting for Kueue (LocalQueue {queue}, Workload {current.name}): {current.message}",
        )
        return step
    assigned = tuple(sorted(set(current.flavors.values())))
    unknown = [f for f in assigned if f not in flavors]
    if unknown:
        step.note = KueueNote(WAITING, f"Kueue admitted Workload {current.name}; reading ResourceFlavor {unknown[0]}")
        return step
    labels: dict[str, str] = {}
    tolerations: list[Mapping[str, Any]] = []
    for name in assigned:
        labels.update(flavors[name].node_labels)
        tolerations += [t for t in flavors[name].tolerations if t not in tolerations]
    step.placement = FlavorPlacement(labels, tuple(tolerations))
    step.flavors = assigned
    if running and not current.pods_ready:
        step.report_ready = current.name
    return step


def dispatched_ready(current: WorkloadView, state: str | None) -> bool:
    """On a MultiKueue manager cluster: whether the dispatched Workload's PodsReady=True is due. Kueue's
    waitForPodsReady runs there too and evicts an admitted Workload that lacks it; Kueue's job framework
    reports it for its own kinds from the job's status, which MultiKueue copies from the worker, and so
    does phalanx for a TrainingJob: once that status says Running."""
    return current.admitted and not current.pods_ready and current.evicted is None and state == "Running"


def finished_apply(namespace: str, name: str, succeeded: bool, message: str, now: str) -> Manifest:
    """A server-side apply of the Workload's Finished=True condition alone, as Kueue's job framework writes
    it when a job ends (reason Succeeded or Failed): the quota is released and MultiKueue's manager copies
    the end to its own Workload."""
    reason = "Succeeded" if succeeded else "Failed"
    text = message[:32768] or ("the job succeeded" if succeeded else "the job failed")
    return _condition_apply(namespace, name, FINISHED, reason, text, now)


def pods_ready_apply(namespace: str, name: str, replicas: int, now: str) -> Manifest:
    """A server-side apply of the Workload's PodsReady=True condition alone (Kueue owns the rest)."""
    return _condition_apply(
        namespace, name, PODS_READY, "PodsReady", f"all {replicas} pods of the gang are running", now
    )


def _condition_apply(namespace: str, name: str, type_: str, reason: str, message: str, now: str) -> Manifest:
    condition = {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace},
        "status": {"conditions": [condition]},
    }


def placement_ops(pod_spec: Mapping[str, Any], placement: FlavorPlacement) -> list[dict[str, Any]]:
    """JSON-patch ops adding the flavor's node selector and tolerations to a gated pod (the API accepts
    new nodeSelector keys and tolerations only while the pod is gated)."""
    ops: list[dict[str, Any]] = []
    selector = pod_spec.get("nodeSelector")
    if placement.node_labels:
        if selector is None:
            ops.append({"op": "add", "path": "/spec/nodeSelector", "value": dict(placement.node_labels)})
        else:
            for k, v in placement.node_labels.items():
                if selector.get(k) != v:
                    ops.append({"op": "add", "path": f"/spec/nodeSelector/{_pointer(k)}", "value": v})
    have = pod_spec.get("tolerations")
    new = [dict(t) for t in placement.tolerations if have is None or t not in have]
    if new:
        if have is None:
            ops.append({"op": "add", "path": "/spec/tolerations", "value": new})
        else:
            ops += [{"op": "add", "path": "/spec/tolerations/-", "value": t} for t in new]
    return ops


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
