"""What the kopf indexes keep of each watched object: small views, never whole bodies (memory is
O(objects), and reconciles read from here instead of listing the API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phalanx.core import names
from phalanx.core.admission import ACCELERATORS, NodeView, Usage
from phalanx.core.health import NodeSignals, node_unhealthy
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
