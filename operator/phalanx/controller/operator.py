"""The running operator: caches (kopf indexes), a work queue, reconcile workers and the gang admitter."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from phalanx.api.models import API_VERSION, KIND
from phalanx.controller import caches, metrics
from phalanx.controller.admitter import Admitter
from phalanx.controller.caches import JobKey
from phalanx.controller.kube import Conflict, Kube, api_error_message
from phalanx.controller.scraper import Scraper, ScrapeSettings
from phalanx.controller.workqueue import WorkQueue
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, Plan, PodView
from phalanx.core.observe import job_view
from phalanx.core.pods import gated
from phalanx.core.reconcile import reconcile

log = logging.getLogger("phalanx")

# A status write that only moves counts ("5/8 pods running") waits until this long after the job's
# last write; the next reconcile then writes the newest counts. A gang of n pods coming up would
# otherwise cost n writes (each one also a watch event and a reconcile), all competing with pod creates.
PROGRESS_WRITE_SECONDS = 1.0


def _rv(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Operator:
    def __init__(self, workers: int = 8) -> None:
        self.queue = WorkQueue()
        self.workers = workers
        self.kube: Kube | None = None
        self.indices: Mapping[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # The newest status resourceVersion this process wrote per job: a cached job older than it is
        # stale (our own write has not come back through the watch yet) and must not be acted on.
        self._written: dict[JobKey, int] = {}
        self._wrote_at: dict[JobKey, float] = {}  # monotonic time of our last status write per job
        self._posting: set[asyncio.Task[None]] = set()  # Events being posted in the background
        self.admitter = Admitter(self)
        self._refusals: dict[JobKey, str] = {}  # the last refused-create message per job, posted once
        # Trainer telemetry; settings are validated here so a misconfiguration stops the operator at once.
        self.scraper = Scraper(self, ScrapeSettings.from_env())

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, indices: Mapping[str, Any]) -> None:
        self.indices = indices
        # Client-side concurrency of API calls (the python client has no QPS limiter of its own).
        self.kube = Kube(concurrency=int(os.environ.get("PHALANX_API_CONCURRENCY", "16")))
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(asyncio.create_task(self.admitter.run()))
        self._tasks.append(asyncio.create_task(self.scraper.run()))
        self._tasks.append(asyncio.create_task(metrics.refresh_forever(self._job_bodies, lambda: len(self.queue))))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.kube:
            self.kube.close()

    # --- cache reads -----------------------------------------------------------------------------
    def _one(self, index: str, key: object) -> Any | None:
        store = self.indices[index].get(key)
        return next(iter(store), None) if store else None

    def job_body(self, key: JobKey) -> Mapping[str, Any] | None:
        result: Mapping[str, Any] | None = self._one("job_index", key)
        return result

    def _job_bodies(self) -> list[Mapping[str, Any]]:
        return [b for store in list(self.indices["job_index"].values()) for b in store]

    def pods_of(self, key: JobKey, uid: str) -> list[PodView]:
        store = self.indices["pod_index"].get(key)
        return [e["view"] for e in store or [] if e["owner"] == uid]

    def priority(self, class_name: str | None) -> int:
        if not class_name:
            return 0
        value = self._one("priority_index", class_name)
        return int(value) if value is not None else 0

    # --- reconcile -------------------------------------------------------------------------------
    def enqueue(self, key: JobKey) -> None:
        self.queue.add(key)

    def claim_changed(self, namespace: str, claim: str) -> None:
        """Wake the jobs of the namespace that mount this claim (O(jobs in the index))."""
        for key, store in list(self.indices["job_index"].items()):
            body = next(iter(store), None)
            if key[0] == namespace and body is not None and caches.checkpoint_claim(key, body["spec"]) == claim:
                self.enqueue(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.monotonic()
            try:
                await self.reconcile(key)  # type: ignore[arg-type]
            except Exception as exc:  # one bad job never stops the others
                metrics.RECONCILE_ERRORS.labels(reason=type(exc).__name__).inc()
                log.warning("reconcile %s failed: %s; retrying", key, api_error_message(exc))
                self.queue.add_after(key, 2.0)
            finally:
                metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
                self.queue.done(key)

    async def reconcile(self, key: JobKey) -> None:
        body = self.job_body(key)
        if body is None:
            self._forget(key)
            return
        meta = body["metadata"]
        if _rv(meta.get("resourceVersion")) < self._written.get(key, 0):
            self.queue.add_after(key, 0.2)  # our last status write is not in the cache yet
            return
        spec = body.get("spec") or {}
        priority = self.priority((spec.get("scheduling") or {}).get("priorityClassName"))
        job = job_view(body, priority)
        pods = self.pods_of(key, job.uid)
        service_exists = self._one("service_index", key) is not None
        claim = caches.checkpoint_claim(key, spec)
        view = self._one("claim_index", (key[0], claim)) if claim else None
        claims = {claim: view} if claim and view else {}
        telemetry = self.scraper.latest(key)  # the trainers' numbers, folded into status while it runs
        plan = reconcile(
            job, pods, service_exists, datetime.now(UTC), self.admitter.notes.get(key), claims, telemetry=telemetry
        )
        await self._apply(key, job, body, plan)
        if job.spec is not None and gated_waiting(job, pods, plan):
            self.admitter.wake()

    async def _apply(self, key: JobKey, job: JobView, body: Mapping[str, Any], plan: Plan) -> None:
        assert self.kube is not None
        ns, name = key
        since = time.monotonic() - self._wrote_at.get(key, 0.0)
        if plan.status_changed and plan.progress_only and since < PROGRESS_WRITE_SECONDS:
            self.queue.add_after(key, PROGRESS_WRITE_SECONDS - since)
        elif plan.status_changed:
            status = plan.status.model_dump(by_alias=True, mode="json")
            try:
                rv = await self.kube.patch_job_status(ns, name, status, body["metadata"]["resourceVersion"])
            except Conflict:
                self.queue.add_after(key, 0.2)
                return  # the plan was made from a stale job; redo it from the fresh one
            self._written[key] = _rv(rv)
            self._wrote_at[key] = time.monotonic()
            metrics.observe_transition(job, plan.status)
        ref = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
        # Events only after the status write succeeded, so they never announce what did not happen.
        for e in plan.events:
            self._post(ref, e.type, e.reason, e.message)
        if plan.delete_pods:
            await asyncio.gather(*(self.kube.delete_pod(ns, p) for p in plan.delete_pods))
        if plan.create:
            results = await asyncio.gather(*(self.kube.create(m) for m in plan.create), return_exceptions=True)
            refused = [r for r in results if isinstance(r, BaseException)]
            if refused:
                # A refused create (Pod Security, quota, webhook) must reach the user, not only our log.
                message = f"the apiserver refused {len(refused)} object(s): {api_error_message(refused[0])}"
                if self._refusals.get(key) != message:
                    self._refusals[key] = message
                    self._post(ref, "Warning", "FailedCreate", message)
                raise refused[0]
            self._refusals.pop(key, None)
            made = sum(1 for m, ok in zip(plan.create, results, strict=True) if ok is True and m["kind"] == "Pod")
            metrics.PODS_CREATED.inc(made)
            if made:  # only what really was created: with a lagging cache a create can return AlreadyExists
                message = f"created {made} pod(s) of attempt {plan.status.attempt}"
                self._post(ref, "Normal", "CreatedPods", message)
        if plan.delete_job:
            await self.kube.delete_job(ns, name)
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    def _post(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event without waiting for it: Events are best effort and go last in the API slots,
        so a reconcile never waits on one and pod creates never queue behind them."""
        assert self.kube is not None
        task = asyncio.create_task(self.kube.post_event(ref, type_, reason, message))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    def _forget(self, key: JobKey) -> None:
        self._refusals.pop(key, None)
        self._written.pop(key, None)
        self._wrote_at.pop(key, None)
        self.admitter.forget(key)


def gated_waiting(job: JobView, pods: list[PodView], plan: Plan) -> bool:
    assert job.spec is not None
    return gated(Gang(job.name, job.namespace, job.uid, job.spec, job.status.attempt)) and (
        bool(plan.create) or any(p.gated for p in pods)
    )
