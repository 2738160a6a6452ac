"""The running operator: caches (kopf indexes), a work queue, reconcile workers and the gang admitter."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from phalanx.api.models import API_VERSION, KIND
from phalanx.controller import caches, metrics
from phalanx.controller.admitter import Admitter
from phalanx.controller.backoff import CAP_SECONDS, FIRST_SECONDS, Backoff
from phalanx.controller.caches import JobKey
from phalanx.controller.kube import Conflict, Kube, api_error_message, refusal_of
from phalanx.controller.kueue import KueueAdmission
from phalanx.controller.scraper import Scraper, ScrapeSettings
from phalanx.controller.workqueue import WorkQueue
from phalanx.core import conditions as cond
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, Plan, PodView
from phalanx.core.observe import format_time, job_view
from phalanx.core.pods import gated
from phalanx.core.reconcile import reconcile
from phalanx.core.refusal import CreateRefusal, classify

log = logging.getLogger("phalanx")

# A status write that only moves counts ("5/8 pods running") waits until this long after the job's
# last write; the next reconcile then writes the newest counts. A gang of n pods coming up would
# otherwise cost n writes (each one also a watch event and a reconcile), all competing with pod creates.
PROGRESS_WRITE_SECONDS = 1.0
# A job whose reconciles fail this many times in a row gets condition ReconcileError with the error.
REPORT_AFTER_FAILURES = 3


def _generation(body: Mapping[str, Any] | None) -> int:
    return _rv(str((body or {}).get("metadata", {}).get("generation", 0)))


def _rv(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Operator:
    def __init__(self, workers: int = 8, api_concurrency: int = 16) -> None:
        self.queue = WorkQueue()
        self.workers = workers
        self.api_concurrency = api_concurrency
        self.kube: Kube | None = None
        self.indices: Mapping[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # The newest status resourceVersion this process wrote per job: a cached job older than it is
        # stale (our own write has not come back through the watch yet) and must not be acted on.
        self._written: dict[JobKey, int] = {}
        self._wrote_at: dict[JobKey, float] = {}  # monotonic time of our last status write per job
        self._posting: set[asyncio.Task[None]] = set()  # Events being posted in the background
        self.admitter = Admitter(self)
        self.kueue = KueueAdmission(self)
        # Per-job backoff of reconciles that raised, and of creates the apiserver refused; the refusal
        # itself is kept to be shown in the job's status until a create succeeds.
        self.errors = Backoff()
        self.refused = Backoff()
        self._refusals: dict[JobKey, CreateRefusal] = {}
        # Trainer telemetry; settings are validated here so a misconfiguration stops the operator at once.
        self.scraper = Scraper(self, ScrapeSettings.from_env())

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, indices: Mapping[str, Any]) -> None:
        self.indices = indices
        self.kube = Kube(concurrency=self.api_concurrency)
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
            key: JobKey = await self.queue.get()  # type: ignore[assignment]
            started = time.monotonic()
            try:
                wait = self.errors.wait_left(key, _generation(self.job_body(key)))
                if wait > 0:
                    self.queue.add_after(key, wait)  # failing: events do not shorten its backoff
                    continue
                await self.reconcile(key)
            except Exception as exc:  # one bad job never stops the others
                metrics.RECONCILE_ERRORS.labels(reason=type(exc).__name__).inc()
                await self._failed(key, exc)
            else:
                if self.errors.succeeded(key):
                    log.info("reconcile %s/%s succeeded after failures", *key)
                    self.queue.add(key)  # once more: that reconcile clears the ReconcileError condition
            finally:
                metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
                self.queue.done(key)

    async def _failed(self, key: JobKey, exc: Exception) -> None:
        """Back off, say so in the log once per distinct error, and after a few in a row in the job's status."""
        body = self.job_body(key)
        message = f"{type(exc).__name__}: {api_error_message(exc)}"
        before = self.errors.get(key)
        entry = self.errors.failed(key, message, _generation(body))
        if before is None or before.message != message:
            log.warning("reconcile %s/%s failed: %s; retrying with backoff", *key, message)
            log.debug("reconcile %s/%s failed", *key, exc_info=exc)
        if entry.count >= REPORT_AFTER_FAILURES and body is not None:
            try:
                await self._report_failure(key, body, message)
            except Exception as report_exc:  # the API itself may be what fails; the log has it already
                log.debug("ReconcileError of %s/%s not written: %s", *key, api_error_message(report_exc))
        self.queue.add_after(key, entry.delay)

    async def _report_failure(self, key: JobKey, body: Mapping[str, Any], message: str) -> None:
        """Set condition ReconcileError on the job, from the raw status (it may be what fails to parse)."""
        assert self.kube is not None
        status = body.get("status") or {}
        others = [c for c in status.get("conditions") or [] if c.get("type") != cond.RECONCILE_ERROR]
        old = next((c for c in status.get("conditions") or [] if c.get("type") == cond.RECONCILE_ERROR), None)
        text = (
            f"reconciling this job fails: {message}; retried with backoff ({FIRST_SECONDS:g} s doubling "
            f"to {CAP_SECONDS:g} s)"
        )[:2048]
        if old is not None and old.get("status") == "True" and old.get("message") == text:
            return
        since = old.get("lastTransitionTime") if old is not None and old.get("status") == "True" else None
        condition = {
            "type": cond.RECONCILE_ERROR,
            "status": "True",
            "reason": "ReconcileFailed",
            "message": text,
            "observedGeneration": _generation(body),
            "lastTransitionTime": since or format_time(datetime.now(UTC)),
        }
        ns, name = key
        rv = await self.kube.patch_job_status(
            ns, name, {"conditions": [*others, condition]}, body["metadata"]["resourceVersion"]
        )
        self._written[key] = _rv(rv)
        self._wrote_at[key] = time.monotonic()
        if since is None:
            ref = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
            self._post(ref, "Warning", "ReconcileFailed", text)

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
        queued = bool(job.spec is not None and job.spec.scheduling.queue_name)
        note = self.kueue.notes.get(key) if queued else self.admitter.notes.get(key)
        if note is None and not queued and job.spec is not None and not pods and job.status.state not in ENDED:
            note = self.admitter.capacity_note(key, body)  # a gang that can never fit gets no pods at all
        failing = self.errors.get(key)
        plan = reconcile(
            job,
            pods,
            service_exists,
            datetime.now(UTC),
            note,
            claims,
            telemetry=telemetry,
            refusal=self._refusals.get(key),
            failure=failing.message if failing else None,
        )
        await self._apply(key, job, body, plan)
        if queued and not job.deleting:
            await self.kueue.sync(key, job, plan.status, pods)
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
            wait = self.refused.wait_left(key, job.generation)
            if wait > 0:
                self.queue.add_after(key, wait)  # the apiserver refused this job's creates: retry with backoff
            else:
                await self._create(key, job, ref, plan)
        if plan.delete_job:
            await self.kube.delete_job(ns, name)
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    async def _create(self, key: JobKey, job: JobView, ref: dict[str, Any], plan: Plan) -> None:
        assert self.kube is not None
        results = await asyncio.gather(*(self.kube.create(m) for m in plan.create), return_exceptions=True)
        failed = [(m, r) for m, r in zip(plan.create, results, strict=True) if isinstance(r, BaseException)]
        made = sum(1 for m, ok in zip(plan.create, results, strict=True) if ok is True and m["kind"] == "Pod")
        metrics.PODS_CREATED.inc(made)
        if made:  # only what really was created: with a lagging cache a create can return AlreadyExists
            self._post(ref, "Normal", "CreatedPods", f"created {made} pod(s) of attempt {plan.status.attempt}")
        verdicts = [(m, r, refusal_of(r)) for m, r in failed]
        transient = [r for _, r, verdict in verdicts if verdict is None]
        if transient:
            raise transient[0]  # the API is in trouble, not the job: the reconcile backs off and retries
        if not verdicts:
            self.refused.succeeded(key)
            if self._refusals.pop(key, None) is not None:
                self.queue.add(key)  # the next reconcile clears ReplicaFailure
            return
        # Refused (Pod Security, quota, a webhook, an invalid spec): the job's status says why, and the
        # same create is retried only with backoff, or at once after the user changes the spec.
        first, _, verdict = verdicts[0]
        assert verdict is not None
        code, text = verdict
        more = f" (and {len(verdicts) - 1} more)" if len(verdicts) > 1 else ""
        message = f"the apiserver refused {first['kind']} {first['metadata']['name']}{more}: {text}"[:2048]
        refusal = CreateRefusal(classify(code, text), message)
        entry = self.refused.failed(key, message, job.generation)
        if self._refusals.get(key) != refusal:
            log.warning("%s/%s: %s; retrying in %g s", *key, message, entry.delay)
        self._refusals[key] = refusal
        self.queue.add(key)  # the next reconcile writes the refusal into status; creates wait for the backoff

    def _post(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event without waiting for it: Events are best effort and go last in the API slots,
        so a reconcile never waits on one and pod creates never queue behind them."""
        assert self.kube is not None
        task = asyncio.create_task(self.kube.post_event(ref, type_, reason, message))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    def _forget(self, key: JobKey) -> None:
        self._refusals.pop(key, None)
        self.errors.succeeded(key)
        self.refused.succeeded(key)
        self._written.pop(key, None)
        self._wrote_at.pop(key, None)
        self.admitter.forget(key)
        self.kueue.forget(key)


ENDED = ("Succeeded", "Failed", "Suspended")


def gated_waiting(job: JobView, pods: list[PodView], plan: Plan) -> bool:
    assert job.spec is not None
    return gated(Gang(job.name, job.namespace, job.uid, job.spec, job.status.attempt)) and (
        bool(plan.create) or any(p.gated for p in pods)
    )
