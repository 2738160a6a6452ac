"""What the kopf indexes keep of each watched object: small views, never whole bodies (memory is
O(objects), and reconciles read from here instead of listing the API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phalanx.core import names
from phalanx.core.admission import ACCELERATORS, NodeView, Usage
from phalanx.core.health import NodeSignals, node_unhealthy
from phalanx.core.model import PodView
from phalanx.core.nodeloss import NodeHealth
from phalanx.core.observe import parse_time, pod_view
from phalanx.core.storage import ClaimView

JobKey = tuple[str, str]


def owner_uid(meta: Mapping[str, Any]) -> str | None:
    return next((o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("controller")), None)


def pod_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"view": pod_view(body), "owner": owner_uid(meta)}


def accelerator_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        requests = (c.get("resources") or {}).get("requests") or {}
        limits = (c.get("resources") or {}).get("limits") or {}
        for r in ACCELERATORS:
            value = requests.get(r, limits.get(r))
            if value is not None:
                total[r] = total.get(r, 0) + int(value)
    return total


def usage_entry(body: Mapping[str, Any]) -> Usage | None:
    """Bound, unfinished pods that hold accelerators, whoever created them."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    requests = accelerator_requests(spec)
    if not requests or not spec.get("nodeName"):
        return None
    return Usage(node=spec["nodeName"], requests=requests)


DEFAULT_SIGNALS = NodeSignals()


def node_entry(body: Mapping[str, Any], signals: NodeSignals = DEFAULT_SIGNALS) -> NodeView:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    alloc = status.get("allocatable") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    unhealthy = node_unhealthy(status.get("conditions") or [], spec.get("taints") or [], signals)
    return NodeView(
        name=meta["name"],
        allocatable={r: int(alloc[r]) for r in ACCELERATORS if r in alloc},
        labels=dict(meta.get("labels") or {}),
        taints=frozenset(
            t["key"]
            for t in spec.get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute") and not t["key"].startswith("node.kubernetes.io/")
        ),
        schedulable=ready and not spec.get("unschedulable") and unhealthy is None,
        unhealthy=unhealthy,
    )


def node_health(body: Mapping[str, Any]) -> NodeHealth:
    """The node's Ready condition; heartbeat times are left out, so only a change of readiness is a change."""
    conditions = (body.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None) or {}
    return NodeHealth(
        name=body["metadata"]["name"],
        ready=ready.get("status") == "True",
        since=parse_time(ready.get("lastTransitionTime")),
        reason=ready.get("reason"),
    )


def job_key_of_pod(labels: Mapping[str, str], namespace: str) -> JobKey:
    return (namespace, labels[names.LABEL_JOB])


def claim_entry(body: Mapping[str, Any]) -> ClaimView:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    return ClaimView(
        name=meta["name"],
        access_modes=tuple(spec.get("accessModes") or ()),
        phase=status.get("phase") or "Pending",
        labels=dict(meta.get("labels") or {}),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def checkpoint_claim(job: JobKey, spec: Mapping[str, Any]) -> str | None:
    """The claim a job's pods mount (its own or the operator's <job>-checkpoints), from the raw spec."""
    ckpt = spec.get("checkpoint") or {}
    if not ckpt or ckpt.get("uri"):
        return None
    return str(ckpt.get("claimName") or names.checkpoint_claim_name(job[1]))


class Caches:
    """kopf's indexes, as the operator reads them: the one place that knows their names (handlers.py
    declares the indexes under these names and hands them over on startup)."""

    JOBS = "job_index"  # (namespace, name) -> [TrainingJob body]
    PODS = "pod_index"  # job key -> [pod_entry] of its pods
    SERVICES = "service_index"  # job key -> [True] while its headless Service exists
    NODES = "node_index"  # node name -> [NodeView]
    NODE_HEALTH = "node_health_index"  # node name -> [NodeHealth]
    USAGE = "usage_index"  # pod -> [Usage] of bound, unfinished accelerator pods, anyone's
    PRIORITIES = "priority_index"  # PriorityClass name -> [value]
    CLAIMS = "claim_index"  # (namespace, claim) -> [ClaimView]
    NAMES = (JOBS, PODS, SERVICES, NODES, NODE_HEALTH, USAGE, PRIORITIES, CLAIMS)

    def __init__(self, indices: Mapping[str, Any] | None = None) -> None:
        self._indices: Mapping[str, Any] = indices or {}

    def _index(self, name: str) -> Mapping[Any, Any]:
        index: Mapping[Any, Any] = self._indices.get(name) or {}
        return index

    def _one(self, name: str, key: object) -> Any | None:
        store = self._index(name).get(key)
        return next(iter(store), None) if store else None

    def _all(self, name: str) -> list[Any]:
        return [v for store in list(self._index(name).values()) for v in store]

    def job(self, key: JobKey) -> Mapping[str, Any] | None:
        body: Mapping[str, Any] | None = self._one(self.JOBS, key)
        return body

    def jobs(self) -> list[tuple[JobKey, Mapping[str, Any]]]:
        """Every cached TrainingJob with its key (a snapshot: safe while kopf updates the index)."""
        return [(key, body) for key, store in list(self._index(self.JOBS).items()) for body in list(store)[:1]]

    def pods_of(self, key: JobKey, uid: str) -> list[PodView]:
        """The pods the job with this uid owns (a job recreated under the same name owns none of the old)."""
        return [e["view"] for e in self._index(self.PODS).get(key) or [] if e["owner"] == uid]

    def pods_by_job(self) -> list[tuple[JobKey, list[PodView]]]:
        return [(key, [e["view"] for e in store or []]) for key, store in list(self._index(self.PODS).items())]

    def service_exists(self, key: JobKey) -> bool:
        return self._one(self.SERVICES, key) is not None

    def claim(self, namespace: str, name: str) -> ClaimView | None:
        view: ClaimView | None = self._one(self.CLAIMS, (namespace, name))
        return view

    def priority(self, class_name: str) -> int | None:
        value = self._one(self.PRIORITIES, class_name)
        return int(value) if value is not None else None

    def node(self, name: str) -> NodeView | None:
        view: NodeView | None = self._one(self.NODES, name)
        return view

    def nodes(self) -> list[NodeView]:
        return self._all(self.NODES)

    def node_health(self, name: str) -> NodeHealth | None:
        health: NodeHealth | None = self._one(self.NODE_HEALTH, name)
        return health

    def usage(self) -> list[Usage]:
        return self._all(self.USAGE)
