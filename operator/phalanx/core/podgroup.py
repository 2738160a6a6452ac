"""Native gang scheduling (spec.scheduling.gangBackend PodGroup): one Workload and one PodGroup per attempt.

Kubernetes 1.36's alpha scheduling.k8s.io/v1alpha2 API (feature gates GenericWorkload and GangScheduling):
a Workload holds the gang's policy as a pod group template (gang, minCount = replicas), a PodGroup made from
it is the attempt's runtime group, and every pod names that PodGroup in spec.schedulingGroup.podGroupName.
The kube-scheduler's GangScheduling plugin then binds the attempt's pods all together or not at all, so the
pods are created without phalanx's own scheduling gate. The objects are created in the order the API asks
for (Workload, then PodGroup, then pods: a PodGroup whose Workload is missing is refused), are owned by the
TrainingJob, and those of older attempts are deleted once no pod of theirs still runs.

Pure: the job's gang and the objects that exist in; one PodGroupStep out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phalanx.api.models import GROUP as PHALANX_GROUP
from phalanx.api.models import KIND
from phalanx.core import names
from phalanx.core.gang import Gang
from phalanx.core.model import Manifest
from phalanx.core.pods import job_labels, owner_reference, pod_group_gang

GROUP = "scheduling.k8s.io"
VERSION = "v1alpha2"
API_VERSION = f"{GROUP}/{VERSION}"
TEMPLATE = "trainers"  # the Workload's one pod group template: the whole gang
SCHEDULED = "PodGroupScheduled"  # the condition the kube-scheduler sets on a PodGroup
WAITING = "WaitingForPodGroup"
UNAVAILABLE = "PodGroupAPIUnavailable"
ADMITTED = "AdmittedByPodGroup"


def uses_pod_group(gang: Gang) -> bool:
    """The kube-scheduler's gang admits this job (gangBackend PodGroup)."""
    return pod_group_gang(gang)


def group_name(job: str, attempt: int) -> str:
    """<job>-a<attempt>, a DNS label: the name of both the attempt's Workload and its PodGroup."""
    return names.attempt_name(job, attempt)


def _metadata(gang: Gang) -> dict[str, Any]:
    return {
        "name": group_name(gang.job, gang.attempt),
        "namespace": gang.namespace,
        "labels": {**job_labels(gang), names.LABEL_ATTEMPT: str(gang.attempt)},
        "ownerReferences": [owner_reference(gang)],
    }


def _gang_policy(gang: Gang) -> dict[str, Any]:
    return {"gang": {"minCount": gang.replicas}}


def build_workload(gang: Gang) -> Manifest:
    """The attempt's Workload: one pod group template, a gang of all `replicas` pods."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": _metadata(gang),
        "spec": {
            "controllerRef": {"apiGroup": PHALANX_GROUP, "kind": KIND, "name": gang.job},
            "podGroupTemplates": [{"name": TEMPLATE, "schedulingPolicy": _gang_policy(gang)}],
        },
    }


def build_pod_group(gang: Gang) -> Manifest:
    """The attempt's PodGroup, made from the Workload's template (the policy is copied, as the API wants)."""
    name = group_name(gang.job, gang.attempt)
    return {
        "apiVersion": API_VERSION,
        "kind": "PodGroup",
        "metadata": _metadata(gang),
        "spec": {
            "podGroupTemplateRef": {"workload": {"workloadName": name, "podGroupTemplateName": TEMPLATE}},
            "schedulingPolicy": _gang_policy(gang),
        },
    }


@dataclass(frozen=True)
class GroupView:
    """What admission needs of one Workload or PodGroup."""

    name: str
    attempt: int | None
    deleting: bool = False
    owner_uid: str | None = None  # the controlling TrainingJob's UID
    # PodGroups only: the kube-scheduler's PodGroupScheduled condition (status, reason, message).
    scheduled: str | None = None
    reason: str = ""
    message: str = ""


def group_view(body: Mapping[str, Any]) -> GroupView:
    meta = body.get("metadata") or {}
    try:
        attempt: int | None = int((meta.get("labels") or {}).get(names.LABEL_ATTEMPT, ""))
    except ValueError:
        attempt = None
    conds = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
    scheduled = conds.get(SCHEDULED) or {}
    owner: Mapping[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    return GroupView(
        name=str(meta.get("name", "")),
        attempt=attempt,
        deleting=bool(meta.get("deletionTimestamp")),
        owner_uid=str(owner["uid"]) if "uid" in owner else None,
        scheduled=str(scheduled["status"]) if "status" in scheduled else None,
        reason=str(scheduled.get("reason") or ""),
        message=str(scheduled.get("message") or ""),
    )


@dataclass(frozen=True)
class PodGroupNote:
    """Where the attempt's gang stands, for the job's Admitted condition."""

    reason: str
    message: str


@dataclass
class PodGroupStep:
    create: list[Manifest] = field(default_factory=list)  # in order: the Workload before the PodGroup
    delete_workloads: list[str] = field(default_factory=list)
    delete_pod_groups: list[str] = field(default_factory=list)
    # The attempt's PodGroup exists (and is not being deleted): its pods may be created.
    ready: bool = False
    note: PodGroupNote | None = None


def decide(
    gang: Gang,
    workloads: Sequence[GroupView],
    pod_groups: Sequence[GroupView],
    finished: bool = False,
    live_attempts: frozenset[int] = frozenset(),
) -> PodGroupStep:
    """finished: the job has ended, so none of its objects is needed; live_attempts: the attempts that
    still have pods not finished. An older attempt's objects go once its pods have stopped: the scheduler
    reads a pod's PodGroup for as long as the pod is unscheduled, and a terminating pod may still be."""
    step = PodGroupStep()
    mine = group_name(gang.job, gang.attempt)
    # Objects of an earlier job of the same name (deleted and created again) are the garbage collector's.
    workloads = [v for v in workloads if v.owner_uid in (None, gang.uid) or v.name == mine]
    pod_groups = [v for v in pod_groups if v.owner_uid in (None, gang.uid) or v.name == mine]

    def foreign(v: GroupView | None) -> bool:
        return v is not None and (v.deleting or v.owner_uid not in (None, gang.uid))

    def stale(v: GroupView) -> bool:
        return not foreign(v) and (
            finished or (v.name != mine and (v.attempt is None or v.attempt not in live_attempts))
        )

    step.delete_pod_groups = [v.name for v in pod_groups if stale(v)]
    step.delete_workloads = [v.name for v in workloads if stale(v)]
    if finished:
        return step
    workload = next((v for v in workloads if v.name == mine), None)
    group = next((v for v in pod_groups if v.name == mine), None)
    if foreign(workload) or foreign(group):
        # A leftover of the same name (being deleted, or a deleted job's) must be gone before its successor.
        step.note = PodGroupNote(WAITING, f"waiting for the old Workload/PodGroup {mine} to be deleted")
        return step
    if workload is None:
        step.create.append(build_workload(gang))
    if group is None:
        step.create.append(build_pod_group(gang))
        step.note = PodGroupNote(
            WAITING, f"creating Workload and PodGroup {mine} (gang of {gang.replicas}) before the pods"
        )
        return step
    step.ready = True
    if group.scheduled == "True":
        step.note = PodGroupNote(
            ADMITTED, f"the kube-scheduler placed all {gang.replicas} pods of PodGroup {mine} as one gang"
        )
    elif group.scheduled == "False":
        step.note = PodGroupNote(
            group.reason or "Unschedulable",
            f"the kube-scheduler holds PodGroup {mine} (gang of {gang.replicas}, all or none): {group.message}",
        )
    else:
        step.note = PodGroupNote(
            "WaitingForScheduler",
            f"PodGroup {mine} exists; the kube-scheduler places its {gang.replicas} pods all together or none",
        )
    return step
