"""Admission by Kueue for jobs with spec.scheduling.queueName: the I/O around core/kueue.py.

After each reconcile of such a job: read its Workloads, create the current attempt's, delete the
others (or all, once the job has ended), and when Kueue has admitted it, add the assigned flavor to
the gated pods and lift their gates. Kueue's verdict goes into the next reconcile as the job's
admission note. Workloads are not watched (Kueue's CRDs may be absent from a cluster without
Kueue): a job waiting for Kueue is looked at again every POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from phalanx.controller.caches import JobKey
from phalanx.controller.kube import api_error_message
from phalanx.core import kueue
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, PodView
from phalanx.core.observe import format_time
from phalanx.core.reconcile import AdmissionNote

if TYPE_CHECKING:
    from phalanx.api.models import TrainingJobStatus
    from phalanx.controller.operator import Operator

log = logging.getLogger("phalanx")
POLL_SECONDS = 2.0
ENDED = ("Succeeded", "Failed", "Suspended")  # no pod runs: no Workload may hold quota


class KueueAdmission:
    def __init__(self, op: Operator) -> None:
        self.op = op
        self.notes: dict[JobKey, AdmissionNote] = {}
        self._flavors: dict[str, kueue.FlavorPlacement] = {}  # ResourceFlavors read so far (they rarely change)
        self._told: dict[JobKey, kueue.KueueNote] = {}  # why a MultiKueue job is not dispatched, as last said

    def forget(self, key: JobKey) -> None:
        self.notes.pop(key, None)

    def gone(self, key: JobKey) -> None:
        """The job was deleted."""
        self.forget(key)
        self._told.pop(key, None)

    async def sync(self, key: JobKey, job: JobView, status: TrainingJobStatus, pods: list[PodView]) -> None:
        """One pass for a job that uses Kueue, after its reconcile; `status` is the one just planned."""
        kube = self.op.kube
        assert kube is not None and job.spec is not None
        ns = job.namespace
        gang = Gang(job.name, ns, job.uid, job.spec, max(status.attempt, 1))
        try:
            workloads = [kueue.workload_view(w) for w in await kube.list_workloads(ns, job.name)]
        except Exception as exc:  # Kueue's CRDs not installed, or no RBAC for them: say so in the job's status
            self._note(key, AdmissionNote("KueueUnavailable", f"cannot read Kueue Workloads: {api_error_message(exc)}"))
            self.op.queue.add_after(key, POLL_SECONDS * 5)
            return
        ended = status.state in ENDED
        running = status.state == "Running"
        live = frozenset(p.attempt for p in pods if p.phase not in ("Succeeded", "Failed"))
        prebuilt = kueue.prebuilt_workload(job.labels, job.annotations)
        mine = prebuilt or kueue.workload_name(job.name, gang.attempt)
        priority, missing = None, None
        if not ended and not prebuilt and all(w.name != mine for w in workloads):
            priority, missing = await self._priority(job)
        decide = functools.partial(kueue.decide, gang, workloads, running=running, live_attempts=live,
                                   priority=priority, missing_class=missing, prebuilt=prebuilt)  # fmt: skip
        wanted = decide(self._flavors, finished=ended, completed=status.state in ("Succeeded", "Failed"))
        for name in wanted.delete:
            await kube.delete_workload(ns, name)
        if wanted.finish is not None:
            now = format_time(datetime.now(UTC))
            ok = status.state == "Succeeded"
            said = next((c.message for c in status.conditions if c.type == status.state and c.status == "True"), "")
            await kube.apply_workload_status(kueue.finished_apply(ns, wanted.finish, ok, said, now))
        if ended:
            self.forget(key)
            return
        if wanted.create is not None:
            await kube.create_workload(wanted.create)
        unread = {f for w in workloads if w.name == mine for f in w.flavors.values()} - set(self._flavors)
        if wanted.placement is None and unread:
            for name in sorted(unread):
                body = await kube.get_resource_flavor(name)
                if body is not None:
                    self._flavors[name] = kueue.flavor_placement(body)
            wanted = decide(self._flavors)
        if wanted.evicted is not None:
            # The next reconcile stops the gang and starts the next attempt (core/reconcile.py _evicted).
            ev = wanted.evicted
            self._note(key, AdmissionNote(ev.reason or "Evicted", ev.message, eviction=ev,
                                          preemptor=self._job_named_by(ev.preemptor_uid())))  # fmt: skip
            self.op.queue.add_after(key, POLL_SECONDS)
            return
        if wanted.note is not None:
            self._note(key, AdmissionNote(wanted.note.reason, wanted.note.message))
            self.op.queue.add_after(key, POLL_SECONDS)
            return
        assert wanted.placement is not None
        self.notes.pop(key, None)
        if wanted.report_ready is not None:
            now = format_time(datetime.now(UTC))
            await kube.apply_workload_status(kueue.pods_ready_apply(ns, wanted.report_ready, gang.replicas, now))
        current = [p for p in pods if p.attempt == gang.attempt and not p.terminating]
        waiting = [p for p in current if p.gated]
        if len(current) < gang.replicas:
            self.op.queue.add_after(key, POLL_SECONDS)  # the gang is lifted whole, once all its pods exist
            return
        # An admitted Workload is looked at again while the gang runs: Kueue may evict it (a preemption,
        # or waitForPodsReady's timeout), and nothing else would wake the job.
        self.op.queue.add_after(key, POLL_SECONDS)
        if not waiting:
            return
        specs = await asyncio.gather(*(kube.pod_spec(ns, p.name) for p in waiting))
        await asyncio.gather(
            *(
                kube.place_and_ungate_pod(ns, p.name, kueue.placement_ops(spec, wanted.placement))
                for p, spec in zip(waiting, specs, strict=True)
                if spec is not None and spec.get("schedulingGates")  # the cache may lag our own patch
            )
        )
        log.info("%s/%s: Kueue admitted attempt %d on flavor(s) %s; gates lifted", *key, gang.attempt,
                 ", ".join(wanted.flavors))  # fmt: skip
        self.op.queue.add(key)

    async def dispatch(self, key: JobKey, job: JobView) -> kueue.KueueNote | None:
        """A job with spec.managedBy kueue.x-k8s.io/multikueue on a manager cluster: only its Workload
        <job>-a1, which Kueue's MultiKueue dispatches to a worker cluster with a copy of the job. No pods,
        no status (MultiKueue copies the worker's), no Workload deleted (its owner reference does that).
        Once the copied status says Running, the Workload's PodsReady=True (core/kueue.py dispatched_ready).
        Returns what keeps it from being dispatched, once per distinct reason (the caller posts it as an
        Event: the status is MultiKueue's)."""
        kube = self.op.kube
        assert kube is not None
        if job.spec is None or job.deleting:
            return None
        if not job.spec.scheduling.queue_name:
            return self._tell(key, kueue.KueueNote(
                "NoQueueName", f"managedBy {job.spec.managed_by} needs spec.scheduling.queueName: no Workload made"
            ))  # fmt: skip
        name = kueue.workload_name(job.name, 1)
        made = [kueue.workload_view(w) for w in await kube.list_workloads(job.namespace, job.name)]
        current = next((w for w in made if w.name == name), None)
        if current is not None:
            if kueue.dispatched_ready(current, job.status.state):
                now = format_time(datetime.now(UTC))
                await kube.apply_workload_status(kueue.pods_ready_apply(job.namespace, name, job.spec.replicas, now))
                log.info("%s/%s: the worker runs it; PodsReady=True on the dispatched Workload %s", *key, name)
            return None
        priority, missing = await self._priority(job)
        if missing is not None:
            self.op.queue.add_after(key, POLL_SECONDS * 5)
            return self._tell(key, kueue.KueueNote(
                kueue.PRIORITY_CLASS_NOT_FOUND,
                f"WorkloadPriorityClass {missing} (label {kueue.PRIORITY_CLASS_LABEL}) does not exist: no Workload "
                "made for MultiKueue until it does",
            ))  # fmt: skip
        await kube.create_workload(kueue.build_workload(Gang(job.name, job.namespace, job.uid, job.spec, 1), priority))
        log.info("%s/%s: Workload %s created for MultiKueue to dispatch", *key, name)
        self._told.pop(key, None)
        return None

    def _tell(self, key: JobKey, note: kueue.KueueNote) -> kueue.KueueNote | None:
        if self._told.get(key) == note:
            return None
        self._told[key] = note
        log.warning("%s/%s: %s", *key, note.message)
        return note

    async def _priority(self, job: JobView) -> tuple[kueue.WorkloadPriority | None, str | None]:
        """The new Workload's priority: the WorkloadPriorityClass of the job's kueue.x-k8s.io/priority-class
        label (read now: Kueue fills in no priority for a Workload it did not make), else the pods'
        PriorityClass. Second: the label's class when it does not exist."""
        assert self.op.kube is not None and job.spec is not None
        label = job.labels.get(kueue.PRIORITY_CLASS_LABEL)
        if label:
            body = await self.op.kube.get_workload_priority_class(label)
            if body is None:
                return None, label
            return kueue.WorkloadPriority.workload_class(label, int(body.get("value") or 0)), None
        klass = job.spec.scheduling.priority_class_name
        return (kueue.WorkloadPriority.pod_class(klass, job.priority), None) if klass else (None, None)

    def _job_named_by(self, uid: str | None) -> str | None:
        """namespace/name of the TrainingJob with this UID, from the operator's cache."""
        if uid is None:
            return None
        for body in self.op.job_bodies():
            meta = body.get("metadata") or {}
            if meta.get("uid") == uid:
                return f"{meta.get('namespace')}/{meta.get('name')}"
        return None

    def _note(self, key: JobKey, note: AdmissionNote) -> None:
        if self.notes.get(key) != note:
            self.notes[key] = note
            self.op.queue.add(key)  # the next reconcile writes Kueue's verdict into the job's status
