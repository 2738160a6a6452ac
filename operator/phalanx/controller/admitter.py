"""The built-in gang admission loop: lifts the scheduling gates of gangs that fit, in priority order.

Decisions come from the pure phalanx.core.admission over the caches; this module only gathers the
inputs, applies the decision (ungating pods) and tells the reconciler why a job waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from phalanx.controller import metrics
from phalanx.controller.caches import JobKey, accelerator_requests
from phalanx.controller.kube import api_error_message
from phalanx.core import admission as adm
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, PodView
from phalanx.core.observe import job_view
from phalanx.core.pods import build_pod
from phalanx.core.reconcile import AdmissionNote

if TYPE_CHECKING:
    from phalanx.controller.operator import Operator

log = logging.getLogger("phalanx")


class Admitter:
    def __init__(self, op: Operator) -> None:
        self.op = op
        self.notes: dict[JobKey, AdmissionNote] = {}
        self._admitted: dict[JobKey, int] = {}  # job -> attempt, until the cache shows the gates gone
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def forget(self, key: JobKey) -> None:
        self.notes.pop(key, None)
        self._admitted.pop(key, None)
        self._wake.set()  # its capacity is free now

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5.0)
            self._wake.clear()
            try:
                await self.admit_once()
            except Exception as exc:
                log.warning("gang admission failed: %s", api_error_message(exc))
            await asyncio.sleep(0.05)  # coalesce bursts of pod and node events into one decision

    async def admit_once(self) -> None:
        assert self.op.kube is not None
        nodes = [v for store in self.op.indices["node_index"].values() for v in store]
        usage = [u for store in self.op.indices["usage_index"].values() for u in store]
        queue: list[adm.GangDemand] = []
        admitted: list[adm.GangDemand] = []
        gated_pods: dict[JobKey, list[PodView]] = {}
        for key, store in list(self.op.indices["job_index"].items()):
            body = next(iter(store), None)
            if body is None:
                continue
            job = job_view(body)
            if job.spec is None or job.status.attempt == 0 or job.deleting:
                continue
            pods = [p for p in self.op.pods_of(key, job.uid) if p.attempt == job.status.attempt]
            demand = demand_of(job, self.op.priority(job.spec.scheduling.priority_class_name), len(pods))
            waiting = [p for p in pods if p.gated and not p.terminating]
            if self._admitted.get(key) == job.status.attempt:
                if waiting:
                    admitted.append(demand)  # admitted by us; the cache has not caught up
                    gated_pods[key] = waiting
                    continue
                self._admitted.pop(key, None)
            if waiting and len(pods) >= job.spec.replicas:
                queue.append(demand)
                gated_pods[key] = waiting
            elif any(not p.gated and p.node is None and p.phase == "Pending" for p in pods):
                admitted.append(demand)
        decision = adm.decide(nodes, usage, admitted, queue)
        for key in decision.admit:
            body = self.op.job_body(key)
            if body is None:
                continue
            self._admitted[key] = int((body.get("status") or {}).get("attempt") or 0)
            self.notes.pop(key, None)
            await asyncio.gather(*(self.op.kube.ungate_pod(key[0], p.name) for p in gated_pods.get(key, [])))
            metrics.ADMISSIONS.inc()
            self.op.enqueue(key)
        for key, (reason, message) in decision.waiting.items():
            note = AdmissionNote(reason, message)
            if self.notes.get(key) != note:
                self.notes[key] = note
                self.op.enqueue(key)
        # Re-ungate admitted jobs whose pods still show gates (a lost patch or a new pod).
        for demand in admitted:
            if demand.key in self._admitted:
                await asyncio.gather(
                    *(self.op.kube.ungate_pod(demand.key[0], p.name) for p in gated_pods.get(demand.key, []))
                )


def demand_of(job: JobView, priority: int, pods: int) -> adm.GangDemand:
    assert job.spec is not None
    # The pod builder is the one place that knows a pod's accelerators, selectors and tolerations.
    pod = build_pod(Gang(job.name, job.namespace, job.uid, job.spec, max(job.status.attempt, 1)), 0)
    spec = pod["spec"]
    return adm.GangDemand(
        key=(job.namespace, job.name),
        priority=priority,
        created=job.created,
        pods=job.spec.replicas,
        per_pod=accelerator_requests(spec),
        node_selector=spec.get("nodeSelector", {}),
        tolerations=frozenset(t["key"] for t in spec.get("tolerations", [])),
    )
