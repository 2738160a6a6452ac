"""The running operator: caches (kopf indexes), a work queue, reconcile workers and the gang admitter."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from phalanx.api.models import API_VERSION, KIND
from phalanx.controller import caches, metrics
from phalanx.controller.admitter import Admitter
from phalanx.controller.backoff import CAP_SECONDS, FIRST_SECONDS, Backoff
from phalanx.controller.caches import Caches, JobKey
from phalanx.controller.election import Elector
from phalanx.controller.kube import Conflict, Gone, Kube, NotLeading, api_error_message, refusal_of
from phalanx.controller.kueue import KueueAdmission
from phalanx.controller.podgroup import PodGroupAdmission
from phalanx.controller.scraper import Scraper
from phalanx.controller.settings import Settings
from phalanx.controller.workqueue import WorkQueue
from phalanx.core import conditions as cond
from phalanx.core import managedby, names
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, Plan, PodView
from phalanx.core.nodeloss import FINISHED, NodeHealth
from phalanx.core.observe import format_time, job_view
from phalanx.core.pods import admitted_pod, gated, pod_group_gang
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
    try:
        return int((body or {}).get("metadata", {}).get("generation", 0))
    except (TypeError, ValueError):
        return 0


class Operator:
    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        """`settings` as controller/settings.py read them at start (defaults when None); `overrides`
        replace single fields (tests)."""
        s = replace(settings or Settings(), **overrides)
        self.queue = WorkQueue()
        self.election = s.lease  # leader election (controller/election.py)
        self.elector: Elector | None = None
        self._election: asyncio.Task[None] | None = None
        self._releasing: asyncio.Task[None] | None = None
        self._warm: asyncio.Event | None = None  # set once kopf has filled every cache
        self.workers = s.workers
        self.watch_namespace = s.watch_namespace
        self.api_concurrency = s.api_concurrency
        self.kube: Kube | None = None
        self.caches = Caches()  # kopf's indexes, once start() has them
        self._tasks: list[asyncio.Task[None]] = []
        # Per job, the resourceVersion our last status write replaced (the write was conditional on
        # it): a cached job still at that version is stale (our own write has not come back through
        # the watch yet) and must not be acted on. resourceVersions are opaque: compared for equality only.
        self._replaced: dict[JobKey, str] = {}
        self._wrote_at: dict[JobKey, float] = {}  # monotonic time of our last status write per job
        self._posting: set[asyncio.Task[None]] = set()  # Events being posted in the background
        self.admitter = Admitter(self)
        self.kueue = KueueAdmission(self)
        self.pod_groups = PodGroupAdmission(self)
        # Per-job backoff of reconciles that raised, and of creates the apiserver refused; the refusal
        # itself is kept to be shown in the job's status until a create succeeds.
        self.errors = Backoff()
        self.refused = Backoff()
        self._refusals: dict[JobKey, CreateRefusal] = {}
        self._node_health: dict[str, NodeHealth] = {}  # last seen per node, to skip heartbeat-only events
        self.scraper = Scraper(self, s.scrape)  # trainer telemetry
        self.node_signals = s.node_signals
        self._unhealthy_nodes: dict[str, str] = {}  # node -> why, as last seen, to wake its jobs on a change

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, indices: Mapping[str, Any]) -> None:
        self.caches = Caches(indices)
        self.kube = Kube(concurrency=self.api_concurrency)
        self._warm = asyncio.Event()
        if self.election.enabled:
            self.elector = Elector(self.kube, self.election, self._started_leading)
            self.kube.may_write = lambda: self.elector is not None and self.elector.leading
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(asyncio.create_task(self.admitter.run()))
        self._tasks.append(asyncio.create_task(self.scraper.run()))
        self._tasks.append(asyncio.create_task(metrics.refresh_forever(self.job_bodies, lambda: len(self.queue))))
        if self.elector is not None:
            self._election = asyncio.create_task(self.elector.run(self._warm))
            self._tasks.append(self._election)
            self._release_on_sigterm()
        else:
            metrics.LEADER.set(1)

    def _release_on_sigterm(self) -> None:
        """Stop acting and release the lease the moment SIGTERM arrives, not when kopf's cleanup runs
        (kopf keeps dispatching events for a while after the signal; the standby should not wait).

        kopf's own SIGTERM handling is untouched: asyncio learns of the signal through its wakeup fd,
        whatever the Python-level handler is, and that is the only thing replaced (and chained) here."""
        if threading.current_thread() is not threading.main_thread():
            return  # an operator run in a test thread: kopf ignores signals there too
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(self.shutting_down)
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def shutting_down(self) -> None:
        """Stop contending, stop acting, and hand the lease over now."""
        if self.elector is None or self._releasing is not None:
            return
        if self._election is not None:
            self._election.cancel()
        self._releasing = asyncio.create_task(self.elector.release())

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.elector is not None:
            self.shutting_down()  # if SIGTERM did not already
            assert self._releasing is not None
            await self._releasing
        if self.kube:
            self.kube.close()

    # --- leadership ------------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    def caches_warm(self) -> None:
        """kopf calls event handlers only once every index is filled: the first call says so."""
        if self._warm is not None:
            self._warm.set()

    def _started_leading(self) -> None:
        """Act at once: every job is reconciled from the warm caches, and admission decides."""
        for key, _ in self.caches.jobs():
            self.enqueue(key)
        self.admitter.wake()

    # --- cache reads -----------------------------------------------------------------------------
    def job_body(self, key: JobKey) -> Mapping[str, Any] | None:
        return self.caches.job(key)

    def job_bodies(self) -> list[Mapping[str, Any]]:
        """Every TrainingJob in the cache."""
        return [body for _, body in self.caches.jobs()]

    def pods_of(self, key: JobKey, uid: str) -> list[PodView]:
        return self.caches.pods_of(key, uid)

    def priority(self, class_name: str | None) -> int:
        return (self.caches.priority(class_name) or 0) if class_name else 0

    def node_healths(self, pods: list[PodView]) -> dict[str, NodeHealth | None]:
        """The cached health of each node the pods are bound to; a node absent from the cache is left
        out (not judged) here and confirmed gone by `_confirm_gone`."""
        found: dict[str, NodeHealth | None] = {}
        for node in {p.node for p in pods if p.node}:
            health = self.caches.node_health(node)
            if health is not None:
                found[node] = health
        return found

    async def _confirm_gone(self, pods: list[PodView], nodes: dict[str, NodeHealth | None]) -> None:
        """Nodes of unfinished pods that the cache lacks: gone only if the apiserver says so, since the
        node watch may lag the pod watch (a node created a moment ago, a watch being re-listed)."""
        assert self.kube is not None
        unknown = {p.node for p in pods if p.node and p.node not in nodes and p.phase not in FINISHED}
        for node in sorted(unknown):
            if not await self.kube.node_exists(node):
                nodes[node] = None

    def node_unhealthy_changed(self, node: str, why: str | None) -> None:
        """Wake the jobs with pods on `node` when its GPUs turn unhealthy or healthy (O(pods), on a change only)."""
        if self._unhealthy_nodes.get(node) == why:
            return
        if why is None:
            self._unhealthy_nodes.pop(node, None)
        else:
            self._unhealthy_nodes[node] = why
        self._wake_jobs_on(node)

    def unhealthy_nodes(self, pods: list[PodView]) -> dict[str, str]:
        """The nodes of `pods` whose GPUs are marked unhealthy, from the node cache: node -> why."""
        out = {}
        for node in {p.node for p in pods if p.node}:
            view = self.caches.node(node)
            if view is not None and view.unhealthy:
                out[node] = view.unhealthy
        return out

    # --- reconcile -------------------------------------------------------------------------------
    def enqueue(self, key: JobKey) -> None:
        self.queue.add(key)

    def node_changed(self, name: str, health: NodeHealth | None) -> None:
        """A node event: when it was deleted or became (or stays, with a new reason) not ready, wake the
        jobs with unfinished pods on it, O(pods of jobs). Heartbeats alone change nothing and cost nothing,
        and neither does a node that is ready: it loses no pod."""
        if health is None:
            self._node_health.pop(name, None)
        else:
            before = self._node_health.get(name)
            self._node_health[name] = health
            if health.ready or before == health:
                return
        self._wake_jobs_on(name)

    def _wake_jobs_on(self, node: str) -> None:
        """Enqueue the jobs with unfinished pods on `node` (O(pods of jobs))."""
        for key, pods in self.caches.pods_by_job():
            if any(p.node == node and p.phase not in FINISHED for p in pods):
                self.enqueue(key)

    def claim_changed(self, namespace: str, claim: str) -> None:
        """Wake the jobs of the namespace that mount this claim (O(jobs in the index))."""
        for key, body in self.caches.jobs():
            if key[0] == namespace and caches.checkpoint_claim(key, body["spec"]) == claim:
                self.enqueue(key)

    async def _worker(self) -> None:
        while True:
            key: JobKey = await self.queue.get()  # type: ignore[assignment]
            started = time.monotonic()
            try:
                if not self.leading:
                    continue  # a standby only keeps its caches; it queues every job when it leads
                wait = self.errors.wait_left(key, _generation(self.job_body(key)))
                if wait > 0:
                    self.queue.add_after(key, wait)  # failing: events do not shorten its backoff
                    continue
                await self.reconcile(key)
            except NotLeading:
                pass  # leadership lapsed mid-reconcile: the next leader reconciles this job afresh
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
        read = body["metadata"]["resourceVersion"]
        await self.kube.patch_job_status(ns, name, {"conditions": [*others, condition]}, read)
        self._replaced[key] = read
        self._wrote_at[key] = time.monotonic()
        if since is None:
            ref = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
            self._post(ref, "Warning", "ReconcileFailed", text)

    async def reconcile(self, key: JobKey) -> None:
        body = self.job_body(key)
        if body is None:
            self._forget(key)
            self.kueue.gone(key)
            return
        meta = body["metadata"]
        if meta.get("resourceVersion") == self._replaced.get(key):
            self.queue.add_after(key, 0.2)  # our last status write is not in the cache yet
            return
        spec = body.get("spec") or {}
        priority = self.priority((spec.get("scheduling") or {}).get("priorityClassName"))
        job = job_view(body, priority)
        who = managedby.role(body)
        if who is not managedby.Role.RECONCILE:  # spec.managedBy: another controller's job (core/managedby.py)
            self._forget(key)
            held = await self.kueue.dispatch(key, job) if who is managedby.Role.DISPATCH else None
            if held is not None:
                ref = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
                self._post(ref, "Warning", held.reason, held.message)
            return
        pods = self.pods_of(key, job.uid)
        service_exists = self.caches.service_exists(key)
        claim = caches.checkpoint_claim(key, spec)
        view = self.caches.claim(key[0], claim) if claim else None
        claims = {claim: view} if claim and view else {}
        telemetry = self.scraper.latest(key)  # the trainers' numbers, folded into status while it runs
        queued = bool(job.spec is not None and job.spec.scheduling.queue_name)
        native = job.spec is not None and pod_group_gang(Gang(job.name, job.namespace, job.uid, job.spec, 1))
        notes = self.kueue.notes if queued else self.pod_groups.notes if native else self.admitter.notes
        note = notes.get(key)
        gates = not queued and not native
        if note is None and gates and job.spec is not None and not pods and job.status.state not in ENDED:
            note = self.admitter.capacity_note(key, body)  # a gang that can never fit gets no pods at all
        failing = self.errors.get(key)
        nodes = self.node_healths(pods)
        await self._confirm_gone(pods, nodes)
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
            nodes=nodes,
            unhealthy_nodes=self.unhealthy_nodes(pods),
        )
        await self._apply(key, job, body, plan)
        if queued and not job.deleting:
            await self.kueue.sync(key, job, plan.status, pods)
        if native and not job.deleting:
            await self.pod_groups.sync(key, job, plan.status, pods)
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
            read = body["metadata"]["resourceVersion"]
            try:
                await self.kube.patch_job_status(ns, name, status, read)
            except Conflict:
                self.queue.add_after(key, 0.2)
                return  # the plan was made from a stale job; redo it from the fresh one
            except Gone:
                return  # deleted meanwhile: nothing is left to do, and its DELETED event forgets it
            self._replaced[key] = read
            self._wrote_at[key] = time.monotonic()
            metrics.observe_transition(job, plan.status)
        ref = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
        # Events only after the status write succeeded, so they never announce what did not happen.
        for e in plan.events:
            self._post(ref, e.type, e.reason, e.message)
        if plan.delete_pods or plan.force_delete_pods or plan.relabel_pods:
            attempt = {names.LABEL_ATTEMPT: str(plan.status.attempt)}  # restartMode InPlace (core/inplace.py)
            await asyncio.gather(
                *(self.kube.delete_pod(ns, p.name, p.uid) for p in plan.delete_pods),
                *(self.kube.delete_pod(ns, p.name, p.uid, grace_seconds=0) for p in plan.force_delete_pods),
                *(self.kube.relabel_pod(ns, p.name, p.uid, attempt) for p in plan.relabel_pods),
            )
        if plan.create:
            wait = self.refused.wait_left(key, job.generation)
            if wait > 0:
                self.queue.add_after(key, wait)  # the apiserver refused this job's creates: retry with backoff
            else:
                await self._create(key, job, body, ref, plan)
        if plan.delete_job:
            await self.kube.delete_job(ns, name)
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    async def _create(
        self, key: JobKey, job: JobView, body: Mapping[str, Any], ref: dict[str, Any], plan: Plan
    ) -> None:
        assert self.kube is not None
        self._admit_at_create(key, job, body, plan)
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

    def _admit_at_create(self, key: JobKey, job: JobView, body: Mapping[str, Any], plan: Plan) -> None:
        """A whole gang about to be created that fits now is created ungated, each pod with its planned node
        (one create per pod instead of a create and a patch, and no wait for the watch to show the gang).
        The attempt is already in status (written before any create), as on the gated path."""
        pods = [i for i, m in enumerate(plan.create) if m["kind"] == "Pod" and m["spec"].get("schedulingGates")]
        if not pods or job.spec is None:
            return
        if not gated(Gang(job.name, job.namespace, job.uid, job.spec, plan.status.attempt)):
            return  # Kueue (or another admission system) lifts these gates
        placed = self.admitter.admit_at_create(key, body, plan.status.attempt, len(pods))
        for i, node in zip(pods, placed or [], strict=False):
            plan.create[i] = admitted_pod(plan.create[i], node)

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
        self._replaced.pop(key, None)
        self._wrote_at.pop(key, None)
        self.admitter.forget(key)
        self.kueue.forget(key)
        self.pod_groups.forget(key)


ENDED = ("Succeeded", "Failed", "Suspended")


def gated_waiting(job: JobView, pods: list[PodView], plan: Plan) -> bool:
    assert job.spec is not None
    return gated(Gang(job.name, job.namespace, job.uid, job.spec, job.status.attempt)) and (
        bool(plan.create) or any(p.gated for p in pods)
    )
