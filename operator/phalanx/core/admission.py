"""Gang admission: which gated jobs fit the free accelerator capacity now, in priority order.

Pure: nodes, the accelerator pods that hold capacity, and the queue in; decisions out. The
placement is a simulation (best fit, packing a gang onto as few nodes as possible), not a promise
from the scheduler; pods of other controllers that arrive between a decision and the binding can
still race with it (documented in docs/scheduling.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

GPU = "nvidia.com/gpu"
TPU = "google.com/tpu"
ACCELERATORS = (GPU, TPU)
PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class NodeView:
    name: str
    allocatable: Mapping[str, int]  # accelerator resource -> count
    labels: Mapping[str, str]
    taints: frozenset[str] = frozenset()  # keys of NoSchedule/NoExecute taints
    schedulable: bool = True


@dataclass(frozen=True)
class Usage:
    """A pod that holds accelerators: bound to a node, or admitted and about to be."""

    node: str | None
    requests: Mapping[str, int]


@dataclass(frozen=True)
class GangDemand:
    key: tuple[str, str]  # (namespace, job)
    priority: int
    created: datetime
    pods: int
    per_pod: Mapping[str, int]  # accelerator resource -> count per pod
    node_selector: Mapping[str, str]
    tolerations: frozenset[str]  # taint keys tolerated

    @property
    def resource(self) -> str | None:
        return next((r for r in ACCELERATORS if self.per_pod.get(r)), None)


@dataclass
class Decision:
    admit: list[tuple[str, str]] = field(default_factory=list)
    # (namespace, job) -> (reason, message) for every job still waiting
    waiting: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def _eligible(node: NodeView, demand: GangDemand) -> bool:
    if not node.schedulable or not node.taints <= demand.tolerations:
        return False
    return all(node.labels.get(k) == v for k, v in demand.node_selector.items())


def _describe(demand: GangDemand) -> str:
    resource = demand.resource or "pods"
    product = demand.node_selector.get(PRODUCT_LABEL)
    unit = f"{demand.per_pod.get(resource, 0)} x {product or resource}"
    return f"{demand.pods} pods of {unit}"


def _place(demand: GangDemand, free: dict[str, int], nodes: Sequence[NodeView]) -> dict[str, int] | None:
    """Best fit: fill the fullest node that still fits each pod, so gangs pack onto few nodes."""
    resource = demand.resource
    if resource is None:
        return {}
    need = demand.per_pod[resource]
    trial = dict(free)
    taken: dict[str, int] = {}
    candidates = [n.name for n in nodes if _eligible(n, demand)]
    for _ in range(demand.pods):
        fits = [n for n in candidates if trial.get(n, 0) >= need]
        if not fits:
            return None
        best = min(fits, key=lambda n: (trial[n], n))
        trial[best] -= need
        taken[best] = taken.get(best, 0) + need
    return taken


def decide(
    nodes: Sequence[NodeView],
    usage: Iterable[Usage],
    admitted: Sequence[GangDemand],
    queue: Sequence[GangDemand],
) -> Decision:
    """Admit queued gangs in order (priority, then age) while they fit; a gang that does not fit
    blocks lower ones that compete for the same nodes, so a big job is never starved by small ones."""
    by_resource: dict[str, dict[str, int]] = {r: {} for r in ACCELERATORS}
    for n in nodes:
        for r in ACCELERATORS:
            by_resource[r][n.name] = n.allocatable.get(r, 0)
    for u in usage:
        if u.node is None:
            continue
        for r, count in u.requests.items():
            if r in by_resource and u.node in by_resource[r]:
                by_resource[r][u.node] -= count
    # Admitted gangs whose pods are not bound yet hold capacity too (placed where they would go).
    for demand in admitted:
        if demand.resource and (placed := _place(demand, by_resource[demand.resource], nodes)):
            for node, count in placed.items():
                by_resource[demand.resource][node] -= count

    decision = Decision()
    blocked: dict[str, set[str]] = {r: set() for r in ACCELERATORS}
    blocker: dict[str, str] = {}
    for demand in sorted(queue, key=lambda d: (-d.priority, d.created, d.key)):
        resource = demand.resource
        if resource is None:
            decision.admit.append(demand.key)
            continue
        eligible = [n for n in nodes if _eligible(n, demand)]
        need_total = demand.pods * demand.per_pod[resource]
        capacity = sum(n.allocatable.get(resource, 0) for n in eligible)
        fits_one = any(n.allocatable.get(resource, 0) >= demand.per_pod[resource] for n in eligible)
        if need_total > capacity or not fits_one:
            decision.waiting[demand.key] = (
                "ExceedsClusterCapacity",
                f"needs {_describe(demand)} = {need_total}; the cluster has {capacity} in all on "
                f"{len(eligible)} matching node(s)",
            )
            continue
        names = {node.name for node in eligible}
        ahead = names & blocked[resource]
        free = by_resource[resource]
        placed = None if ahead else _place(demand, free, nodes)
        if placed is None:
            free_total = sum(max(free[x], 0) for x in names)
            holders = sum(1 for x in names if free[x] > 0)
            if ahead:
                first = min(blocker[x] for x in ahead)
                msg = f"needs {_describe(demand)}; queued behind {first}, which needs the same nodes"
            else:
                msg = f"needs {_describe(demand)} = {need_total}; {free_total} free across {holders} node(s)"
            decision.waiting[demand.key] = ("InsufficientGPU" if resource == GPU else "InsufficientTPU", msg)
            blocked[resource] |= names
            for node_name in names:
                blocker.setdefault(node_name, f"{demand.key[0]}/{demand.key[1]}")
            continue
        for node, count in placed.items():
            free[node] -= count
        decision.admit.append(demand.key)
    return decision
