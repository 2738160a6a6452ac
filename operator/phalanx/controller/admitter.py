"""The built-in gang admission loop: lifts the scheduling gates of gangs that fit, in priority order.

Decisions come from the pure phalanx.core.admission over the caches (kopf indexes); this module
only gathers the inputs, applies the decision (ungating pods, with the simulated node as a
preference for the scheduler) and tells the reconciler why a job waits. It never lists the API.

State that must survive a restart lives in the pods, not here: a gang is admitted once any pod of
its current attempt has lost its gate (gates are only ever lifted for a whole gang), so a new
operator finishes lifting a half-lifted gang instead of queueing it again, and never counts a gang
twice. What is kept in memory is only a cache: the gangs this process lifted whose pods the watch
has not shown ungated yet, parsed jobs, and the notes for the reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from phalanx.controller import metrics
from phalanx.controller.caches import JobKey, accelerator_requests
from phalanx.controller.kube import NotLeading, api_error_message
from phalanx.core import admission as adm
from phalanx.core import managedby, names
from phalanx.core.gang import Gang
from phalanx.core.model import JobView, PodView
from phalanx.core.observe import job_view
from phalanx.core.pods import PREFERRED, build_pod, gated, node_preference
from phalanx.core.reconcile import AdmissionNote

if TYPE_CHECKING:
    from phalanx.controller.operator import Operator

log = logging.getLogger("phalanx")

# Pods this process ungated may still show gates in the cache for a moment; only after this long is
# a gate that is still there taken as lost (a failed patch) and lifted again.
RELIFT_AFTER_SECONDS = 2.0
# How often a waiting job's message may be rewritten when only its numbers changed (same reason).
NOTE_REFRESH_SECONDS = 10.0
# While gangs wait, how often the loop re-reads the caches for capacity freed without an event it hears.
IDLE_RECHECK_SECONDS = 1.0
# Job states in which no pod of the current attempt waits for admission or binding: skipped cheaply.
SETTLED_STATES = frozenset({"Running", "Succeeded", "Failed", "Suspended"})


@dataclass(frozen=True)
class Shape:
    """What admission needs to know of a job's pods; built once per job generation."""

    per_pod: Mapping[str, int]
    node_selector: Mapping[str, str]
    tolerations: frozenset[str]
    affinity: Mapping[str, Any]  # the built pod's spec.affinity, to aim the node-preference patch
    domain: str | None  # topologyKey of a required affinity to the gang itself: all pods in one domain
    avoided: frozenset[str] = frozenset()  # nodes kept out by status.avoidedNodes


@dataclass
class _Inputs:
    """What one admission pass decides on (see Admitter._gather)."""

    queue: list[adm.GangDemand] = field(default_factory=list)  # gangs whose pods all exist, gated
    admitted: list[adm.GangDemand] = field(default_factory=list)  # admitted gangs with pods not bound yet
    gated_pods: dict[JobKey, list[PodView]] = field(default_factory=dict)  # pods still gated, in index order
    to_place: dict[JobKey, list[PodView]] = field(default_factory=dict)  # the pods a placement is for
    unfinished: list[JobKey] = field(default_factory=list)  # admitted gangs with gates left (lost patch, crash)


@dataclass(frozen=True)
class _Cached:
    resource_version: str
    job: JobView
    shape: Shape


class Admitter:
    def __init__(self, op: Operator) -> None:
        self.op = op
        self.notes: dict[JobKey, AdmissionNote] = {}
        self._noted: dict[JobKey, float] = {}  # when each job's note was last published
        self._lifted: dict[JobKey, tuple[int, float]] = {}  # job -> (attempt, when) we lifted its gates
        self._jobs: dict[JobKey, _Cached] = {}
        # Gangs admitted as they were created (admit_at_create): attempt and demand, until the cache shows them.
        self._booked: dict[JobKey, tuple[int, adm.GangDemand]] = {}
        self._wake = asyncio.Event()
        self._computed = 0.0  # seconds the last pass computed (on the event loop), API calls aside
        self._nodes: dict[str, adm.NodeView] = {}  # what admission last read of each node, to skip no-op events

    def wake(self) -> None:
        self._wake.set()

    def forget(self, key: JobKey) -> None:
        self.notes.pop(key, None)
        self._noted.pop(key, None)
        self._lifted.pop(key, None)
        self._booked.pop(key, None)
        self._jobs.pop(key, None)
        self.wake()  # its capacity is free now

    async def run(self) -> None:
        # kopf calls event handlers only once every index is filled, and every wake() comes from one
        # (or from a reconcile, which they start): before the first, the caches may be half-filled
        # and a decision on them could book a gang twice or fail a job that fits.
        await self._wake.wait()
        while True:
            self._wake.clear()
            waiting = False
            try:
                decision = await self.admit_once()
                waiting = any(not w.fatal for w in decision.waiting.values())
            except NotLeading:
                pass  # leadership lapsed during the pass; the next leader decides afresh
            except Exception as exc:
                log.warning("gang admission failed: %s", api_error_message(exc))
            # Coalesce bursts of pod and node events into one decision. A pass computes on the event
            # loop: pausing at least as long as that took keeps admission under half of the loop in
            # a burst, so the watches and the workers that create the next gangs are never starved.
            await asyncio.sleep(max(0.05, self._computed))
            # Job, pod-of-ours and node events wake the loop; capacity freed by any other pod (or by
            # a gang ending) is only seen in the usage cache, so while gangs wait it is re-read
            # every second. A pass reads caches only, so this costs no API calls.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=IDLE_RECHECK_SECONDS if waiting else 5.0)

    def _cached(self, key: JobKey, body: Mapping[str, Any]) -> _Cached | None:
        rv = str(body["metadata"].get("resourceVersion", ""))
        hit = self._jobs.get(key)
        if hit is not None and hit.resource_version == rv:
            return hit
        job = job_view(body)
        if job.spec is None:
            return None
        same = hit is not None and hit.job.generation == job.generation
        old = hit.shape if same and hit is not None and hit.shape.avoided == set(job.status.avoided_nodes) else None
        try:
            shape = old or shape_of(job)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # a template that makes no pod: the reconcile marks the job InvalidSpec
        entry = _Cached(rv, job, shape)
        self._jobs[key] = entry
        return entry

    def capacity_note(self, key: JobKey, body: Mapping[str, Any]) -> AdmissionNote | None:
        """Before a gang's pods are created: a fatal note when the gang can never fit the cluster, so the
        job fails with ExceedsClusterCapacity instead of creating pods that would wait for ever. O(nodes)."""
        entry = self._cached(key, body)
        if entry is None or entry.job.spec is None:
            return None
        job = entry.job
        assert job.spec is not None
        if not gated(Gang(job.name, job.namespace, job.uid, job.spec, max(job.status.attempt, 1))):
            return None  # another admission system decides
        nodes = self.op.caches.nodes()
        never = adm.never_fits(nodes, demand_of(job, entry.shape, 0, job.spec.replicas))
        return AdmissionNote(never.reason, never.message, fatal=True) if never else None

    def node_changed(self, name: str, view: adm.NodeView | None) -> None:
        """A node event: wake only when what admission reads of the node changed (kubelets, and kwok,
        update every node's heartbeat every few seconds; 1000 nodes make that ~4 events/s)."""
        if view is None:
            changed = self._nodes.pop(name, None) is not None
        else:
            changed = self._nodes.get(name) != view
            self._nodes[name] = view
        if changed:
            self.wake()

    def _gather(self, now: float) -> _Inputs:
        """O(jobs): the gangs that wait for admission and the admitted ones still binding, from the caches."""
        got = _Inputs()
        seen: dict[JobKey, int] = {}  # gangs of built-in admission, at the attempt the cache shows
        for key, body in self.op.caches.jobs():
            if not may_wait(body):
                continue
            entry = self._cached(key, body)
            if entry is None:
                continue
            job, spec = entry.job, entry.job.spec
            assert spec is not None
            attempt = job.status.attempt
            if not gated(Gang(job.name, job.namespace, job.uid, spec, attempt)):
                continue  # Kueue, a gang scheduler or nobody admits this job
            seen[key] = attempt
            pods = sorted(
                (p for p in self.op.pods_of(key, job.uid) if p.attempt == attempt and not p.terminating),
                key=lambda p: p.index,
            )
            waiting = [p for p in pods if p.gated]
            loose = [p for p in pods if p.node is None and p.phase == "Pending"]
            # Pods of an admitted gang not created (or not in the cache) yet keep their room too: a gang
            # admitted as it is created, or one whose creates a crash cut short.
            missing = max(0, spec.replicas - len(pods))
            priority = self.op.priority(spec.scheduling.priority_class_name)
            ours = self._lifted.get(key)
            ours_now = ours is not None and ours[0] == attempt
            if ours is not None and (not ours_now or (not waiting and not missing)):
                del self._lifted[key]  # the cache caught up (or a new attempt began)
            if ours_now or any(not p.gated for p in pods):
                if loose or missing:
                    got.admitted.append(demand_of(job, entry.shape, priority, len(loose) + missing))
                    got.to_place[key] = loose
                if waiting and (ours is None or not ours_now or now - ours[1] > RELIFT_AFTER_SECONDS):
                    got.unfinished.append(key)
                    got.gated_pods[key] = waiting
                continue
            if waiting and len(pods) >= spec.replicas:
                got.queue.append(demand_of(job, entry.shape, priority, spec.replicas))
                got.gated_pods[key] = waiting
                got.to_place[key] = pods
        for key in [k for k in self._jobs if k not in seen]:
            del self._jobs[key]
        for key in [k for k in self.notes if k not in seen]:
            del self.notes[key]
            self._noted.pop(key, None)
        # Gangs admitted as they were created, while the cache still shows the job before its attempt
        # was recorded: their whole demand stays booked until the cache shows that attempt.
        for key, (attempt, demand) in list(self._booked.items()):
            cached = self.op.caches.job(key)
            if cached is None or int((cached.get("status") or {}).get("attempt") or 0) >= attempt:
                del self._booked[key]
            else:
                got.admitted.append(demand)
        for key in [k for k in self._lifted if k not in seen and k not in self._booked]:
            del self._lifted[key]
        return got

    def admit_at_create(self, key: JobKey, body: Mapping[str, Any], attempt: int, pods: int) -> list[str] | None:
        """Called (without awaiting anything) right before a gang's pods are created: when no other gang
        waits and the whole gang fits now, book it as admitted and return a node per pod, so its pods are
        created ungated with their placement instead of gated and lifted one patch each after the watch
        has shown them. None: create them gated, the loop decides (in priority order, with the others).

        Safe because the booking is made in the same step as the decision, on the event loop: the next
        pass counts the gang's pods, created or not yet seen, as admitted (`_gather`), and after a
        crash any pod without gates makes the gang admitted for the new operator too."""
        if not self.op.leading:
            return None
        now = time.monotonic()
        inputs = self._gather(now)
        entry = self._cached(key, body)
        known = {d.key for d in inputs.admitted} | set(self._booked) | set(inputs.gated_pods)
        if entry is None or inputs.queue or inputs.unfinished or key in known:
            return None  # others wait (order matters), or this gang is already known: the loop decides
        job = entry.job
        assert job.spec is not None
        if pods != job.spec.replicas or self.op.pods_of(key, job.uid):
            return None  # not the whole gang at once (a crash cut its creates short): the loop decides
        demand = demand_of(job, entry.shape, self.op.priority(job.spec.scheduling.priority_class_name), pods)
        if self._ahead_of(demand, known):
            return None  # an older (or higher-priority) gang is still on its way to admission: the loop orders them
        decision = adm.decide(self.op.caches.nodes(), self.op.caches.usage(), inputs.admitted, [demand])
        placed = decision.placements.get(key)
        if key not in decision.admit or placed is None or len(placed) != pods:
            return None
        self._booked[key] = (attempt, demand)
        self._lifted[key] = (attempt, now)
        self.notes.pop(key, None)
        metrics.ADMISSIONS.inc()
        log.info("admitted %s/%s as it is created: %d pod(s) onto %d node(s)", *key, pods, len(set(placed)))
        return placed

    def _ahead_of(self, demand: adm.GangDemand, admitted: set[JobKey]) -> bool:
        """Whether another job of built-in admission, not admitted and not settled (its pods may not exist
        yet), comes before `demand` in the loop's order (priority, then age). O(jobs)."""
        mine = (-demand.priority, demand.created, demand.key)
        for key, body in self.op.caches.jobs():
            if key == demand.key or key in admitted or body["metadata"].get("deletionTimestamp"):
                continue
            if (body.get("status") or {}).get("state") in SETTLED_STATES:
                continue
            if managedby.role(body) is not managedby.Role.RECONCILE:
                continue  # another controller's job never holds up ours
            entry = self._cached(key, body)
            if entry is None or entry.job.spec is None:
                continue
            job = entry.job
            assert job.spec is not None
            if not gated(Gang(job.name, job.namespace, job.uid, job.spec, max(job.status.attempt, 1))):
                continue
            if (-self.op.priority(job.spec.scheduling.priority_class_name), job.created, key) < mine:
                return True
        return False

    async def admit_once(self) -> adm.Decision:
        """One decision over the caches: O(jobs) to find the gangs that wait; only when some do, also
        O(nodes + accelerator pods bound + pods of waiting jobs)."""
        if not self.op.leading:
            return adm.Decision()  # a standby decides nothing; it is woken when it leads
        began = time.perf_counter()
        now = time.monotonic()
        got = self._gather(now)
        queue, admitted, gated_pods, to_place, unfinished = (
            got.queue, got.admitted, got.gated_pods, got.to_place, got.unfinished
        )  # fmt: skip
        if not queue and not admitted and not unfinished:
            self._computed = time.perf_counter() - began
            return adm.Decision()  # nothing gated or binding: no need to read 1000 nodes and their pods
        nodes, usage = self.op.caches.nodes(), self.op.caches.usage()
        started = time.perf_counter()
        decision = adm.decide(nodes, usage, admitted, queue)
        took = (time.perf_counter() - started) * 1000
        lifts = []  # every gate of every gang admitted now, lifted concurrently (the client bounds it)
        for key in decision.admit:
            entry = self._jobs[key]
            placed = decision.placements.get(key) or []
            log.info(
                "admitted %s/%s: %d pod(s) onto %d node(s); the decision over %d queued gang(s) took %.1f ms",
                *key,
                len(placed),
                len(set(placed)),
                len(queue),
                took,
            )
            self._lifted[key] = (entry.job.status.attempt, now)
            self.notes.pop(key, None)
            lifts.append(self._lift(key, gated_pods.get(key, []), to_place.get(key, []), decision.placements.get(key)))
            metrics.ADMISSIONS.inc()
        lifts += [
            self._lift(key, gated_pods[key], to_place.get(key, []), decision.placements.get(key)) for key in unfinished
        ]
        self._computed = time.perf_counter() - began
        await asyncio.gather(*lifts)
        for key in decision.admit:
            self.op.enqueue(key)
        for key, why in decision.waiting.items():
            note, old = AdmissionNote(why.reason, why.message, why.fatal), self.notes.get(key)
            if old == note:
                continue
            # A new reason is news at once. The numbers in a message change with every pod that
            # comes or goes; each change is a status write per waiting job, so a job's message is
            # refreshed at most every NOTE_REFRESH_SECONDS (500 waiting jobs would otherwise flood
            # the API each time capacity moves).
            same_reason = old is not None and (old.reason, old.fatal) == (note.reason, note.fatal)
            if same_reason and now - self._noted.get(key, 0.0) < NOTE_REFRESH_SECONDS:
                continue
            self.notes[key] = note
            self._noted[key] = now
            self.op.enqueue(key)
        return decision

    async def _lift(
        self, key: JobKey, pods: list[PodView], placed_pods: list[PodView], placement: list[str] | None
    ) -> None:
        """Ungate `pods`; each one the simulation placed gets that node as a scheduling preference."""
        assert self.op.kube is not None
        kube, shape = self.op.kube, self._jobs[key].shape
        node_of = dict(zip((p.name for p in placed_pods), placement or [], strict=False))
        await asyncio.gather(
            *(
                kube.ungate_pod(
                    key[0], p.name, prefer_node(shape.affinity, node_of[p.name]) if p.name in node_of else None
                )
                for p in pods
            )
        )


def may_wait(body: Mapping[str, Any]) -> bool:
    """Cheap test on the raw job: could any pod of its current attempt wait for admission or binding?"""
    status = body.get("status") or {}
    if body["metadata"].get("deletionTimestamp") or not status.get("attempt"):
        return False
    if managedby.role(body) is not managedby.Role.RECONCILE:
        return False  # another controller's job, whatever status it writes: never a gang of ours
    return status.get("state") not in SETTLED_STATES


def shape_of(job: JobView) -> Shape:
    assert job.spec is not None
    # The pod builder is the one place that knows a pod's accelerators, selectors and tolerations.
    avoided = tuple(job.status.avoided_nodes)
    gang = Gang(job.name, job.namespace, job.uid, job.spec, max(job.status.attempt, 1), avoided)
    spec = build_pod(gang, 0)["spec"]
    tolerations = frozenset(t.get("key") or adm.ANY_TAINT for t in spec.get("tolerations", []))
    affinity = spec.get("affinity") or {}
    required = (affinity.get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []
    own = {names.LABEL_JOB: job.name}
    domain = next(
        (
            t["topologyKey"]
            for t in required
            if own.items() <= ((t.get("labelSelector") or {}).get("matchLabels") or {}).items()
        ),
        None,
    )
    return Shape(
        per_pod=accelerator_requests(spec),
        node_selector=dict(spec.get("nodeSelector", {})),
        tolerations=tolerations,
        affinity=affinity,
        domain=domain,
        avoided=frozenset(avoided),
    )


def demand_of(job: JobView, shape: Shape, priority: int, pods: int) -> adm.GangDemand:
    return adm.GangDemand(
        key=(job.namespace, job.name),
        priority=priority,
        created=job.created,
        pods=pods,
        per_pod=shape.per_pod,
        node_selector=shape.node_selector,
        tolerations=shape.tolerations,
        domain=shape.domain,
        avoided=shape.avoided,
    )


def prefer_node(affinity: Mapping[str, Any], node: str) -> list[dict[str, Any]]:
    """JSON-patch ops adding a preferred node affinity for `node` (allowed while the pod is gated).

    A preference, not a rule: if the node is taken meanwhile the pod still goes wherever it fits.
    It makes the scheduler follow the packing the admission planned instead of spreading the gang.
    """
    term = node_preference(node)
    node_affinity = affinity.get("nodeAffinity")
    if not affinity:
        return [{"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {PREFERRED: [term]}}}]
    if node_affinity is None:
        return [{"op": "add", "path": "/spec/affinity/nodeAffinity", "value": {PREFERRED: [term]}}]
    if PREFERRED not in node_affinity:
        return [{"op": "add", "path": f"/spec/affinity/nodeAffinity/{PREFERRED}", "value": [term]}]
    return [{"op": "add", "path": f"/spec/affinity/nodeAffinity/{PREFERRED}/-", "value": term}]
