"""Native gang scheduling for jobs with spec.scheduling.gangBackend PodGroup: the I/O around core/podgroup.py.

After each reconcile of such a job: read its Workloads and PodGroups, create the current attempt's (the
Workload first), delete older attempts' once their pods have stopped (or all, once the job has ended).
Whether the attempt's PodGroup exists, and what the kube-scheduler says of it, goes into the next
reconcile as the job's admission note: only then are the attempt's pods created. The objects are not
watched (the API is alpha and off by default, so it may be absent): a job whose gang is not yet placed
is looked at again every POLL_SECONDS. Without the API the job stays queued with reason
PodGroupAPIUnavailable and the apiserver's answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from phalanx.controller.caches import JobKey
from phalanx.controller.kube import api_error_message
from phalanx.core import podgroup
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, PodView
from phalanx.core.reconcile import AdmissionNote

if TYPE_CHECKING:
    from phalanx.api.models import TrainingJobStatus
    from phalanx.controller.operator import Operator

log = logging.getLogger("phalanx")
POLL_SECONDS = 2.0
ENDED = ("Succeeded", "Failed", "Suspended")  # no pod runs: no PodGroup is needed


class PodGroupAdmission:
    def __init__(self, op: Operator) -> None:
        self.op = op
        self.notes: dict[JobKey, AdmissionNote] = {}
        # The API version asked for: the one Kubernetes 1.36 serves behind its feature gates.
        self.version = podgroup.VERSION

    def forget(self, key: JobKey) -> None:
        self.notes.pop(key, None)

    async def sync(self, key: JobKey, job: JobView, status: TrainingJobStatus, pods: list[PodView]) -> None:
        """One pass for a job on the PodGroup backend, after its reconcile; `status` is the one just planned."""
        kube = self.op.kube
        assert kube is not None and job.spec is not None
        ns, v = job.namespace, self.version
        gang = Gang(job.name, ns, job.uid, job.spec, max(status.attempt, 1))
        try:
            workloads = [podgroup.group_view(b) for b in await kube.list_scheduling(ns, v, "workloads", job.name)]
            groups = [podgroup.group_view(b) for b in await kube.list_scheduling(ns, v, "podgroups", job.name)]
        except Exception as exc:  # the feature gates are off, or no RBAC for the API: say so in the job's status
            self._unavailable(key, f"cannot read {podgroup.GROUP}/{v} Workloads and PodGroups", exc)
            return
        ended = status.state in ENDED
        live = frozenset(p.attempt for p in pods if p.phase not in ("Succeeded", "Failed"))
        step = podgroup.decide(gang, workloads, groups, finished=ended, live_attempts=live)
        for name in step.delete_pod_groups:
            await kube.delete_scheduling(ns, v, "podgroups", name)
        for name in step.delete_workloads:
            await kube.delete_scheduling(ns, v, "workloads", name)
        if ended:
            self.forget(key)
            return
        try:
            for manifest in step.create:  # in order: a PodGroup whose Workload is missing is refused
                await kube.create_scheduling(v, manifest)
        except Exception as exc:
            self._unavailable(key, f"cannot create {podgroup.GROUP}/{v} {manifest['kind']} "
                              f"{manifest['metadata']['name']}", exc)  # fmt: skip
            return
        if step.create:
            log.info("%s/%s: Workload and PodGroup %s created for attempt %d", *key,
                     podgroup.group_name(job.name, gang.attempt), gang.attempt)  # fmt: skip
            step = podgroup.decide(gang, [*workloads, *_made(step, "Workload")], [*groups, *_made(step, "PodGroup")],
                                   live_attempts=live)  # fmt: skip
        assert step.note is not None
        ready = gang.attempt if step.ready else None
        self._note(key, AdmissionNote(step.note.reason, step.note.message, group_ready_attempt=ready))
        current = [p for p in pods if p.attempt == gang.attempt and not p.terminating]
        if len(current) < gang.replicas or not all(p.node for p in current):
            self.op.queue.add_after(key, POLL_SECONDS)  # the scheduler's verdict on the PodGroup is not watched

    def _unavailable(self, key: JobKey, what: str, exc: Exception) -> None:
        self._note(key, AdmissionNote(podgroup.UNAVAILABLE, f"{what}: {api_error_message(exc)} (native gang "
                   "scheduling needs Kubernetes 1.36 with feature gates GenericWorkload and GangScheduling and "
                   f"--runtime-config={podgroup.GROUP}/{self.version}=true)"))  # fmt: skip
        self.op.queue.add_after(key, POLL_SECONDS * 5)

    def _note(self, key: JobKey, note: AdmissionNote) -> None:
        if self.notes.get(key) != note:
            self.notes[key] = note
            self.op.queue.add(key)  # the next reconcile writes it into the job's status (and creates the pods)


def _made(step: podgroup.PodGroupStep, kind: str) -> list[podgroup.GroupView]:
    return [podgroup.group_view(m) for m in step.create if m["kind"] == kind]
