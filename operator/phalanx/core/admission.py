"""Gang admission: which gated jobs fit the free accelerator capacity now, in priority order.

Pure: nodes, the accelerator pods that hold capacity, the admitted gangs still binding and the
queue in; one Decision out. The placement is a simulation (packing each gang onto as few nodes as
possible, then best fit), not a promise from the scheduler: the admitter passes it on to the pods
as a node preference, and pods of other controllers that arrive between a decision and the
binding can still race with it (docs/scheduling.md).

Cost: O(nodes + usage entries) to build the free map, then per queued gang O(nodes log nodes) at
most. Nothing here grows with the number of pods in the cluster: usage holds only bound pods that
hold accelerators, and those are bounded by the accelerators the nodes have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

GPU = "nvidia.com/gpu"
TPU = "google.com/tpu"
ACCELERATORS = (GPU, TPU)
PRODUCT_LABEL = "nvidia.com/gpu.product"
TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
ANY_TAINT = "*"  # in GangDemand.tolerations: a toleration without key (operator Exists) tolerates every taint

EXCEEDS_CLUSTER = "ExceedsClusterCapacity"
INSUFFICIENT = {GPU: "InsufficientGPU", TPU: "InsufficientTPU"}

JobKey = tuple[str, str]  # (namespace, job)


@dataclass(frozen=True)
class NodeView:
    name: str
    allocatable: Mapping[str, int]  # accelerator resource -> count
    labels: Mapping[str, str]
    taints: frozenset[str] = frozenset()  # keys of NoSchedule/NoExecute taints
    schedulable: bool = True  # Ready, not cordoned, and its accelerators not marked unhealthy
    unhealthy: str | None = None  # why its accelerators count as unhealthy (core/health.node_unhealthy)


@dataclass(frozen=True)
class Usage:
    """A bound, unfinished pod that holds accelerators (anyone's, not only phalanx's)."""

    node: str | None
    requests: Mapping[str, int]


@dataclass(frozen=True)
class GangDemand:
    key: JobKey
    priority: int
    created: datetime
    pods: int  # pods to place: the whole gang while queued, the pods not bound yet once admitted
    per_pod: Mapping[str, int]  # accelerator resource -> count per pod
    node_selector: Mapping[str, str]
    tolerations: frozenset[str]  # taint keys tolerated (ANY_TAINT: all)
    domain: str | None = None  # a node label all the gang's pods must share (a TPU slice's node pool)
    avoided: frozenset[str] = frozenset()  # nodes its pods are kept off (status.avoidedNodes)

    @property
    def resource(self) -> str | None:
        return next((r for r in ACCELERATORS if self.per_pod.get(r)), None)

    @property
    def name(self) -> str:
        return f"{self.key[0]}/{self.key[1]}"


@dataclass(frozen=True)
class Waiting:
    """Why a gang is not admitted. fatal: it can never fit this cluster, so waiting is pointless."""

    reason: str
    message: str
    fatal: bool = False


@dataclass
class Decision:
    admit: list[JobKey] = field(default_factory=list)
    # The simulated node of each pod still to place (in pod index order), for admitted and newly
    # admitted gangs: the admitter hands it to the scheduler as a preference.
    placements: dict[JobKey, list[str]] = field(default_factory=dict)
    waiting: dict[JobKey, Waiting] = field(default_factory=dict)


def eligible(node: NodeView, demand: GangDemand) -> bool:
    """The node matches the gang's nodeSelector, is not one it avoids, and every taint on it is tolerated
    (readiness aside)."""
    if node.name in demand.avoided:
        return False
    if ANY_TAINT not in demand.tolerations and not node.taints <= demand.tolerations:
        return False
    return all(node.labels.get(k) == v for k, v in demand.node_selector.items())


def place(need: int, pods: int, free: Mapping[str, int], names: Iterable[str]) -> list[str] | None:
    """A node for each of `pods` pods of `need` units, or None when they do not all fit.

    Fewest nodes first: one node that holds the whole gang if any (the tightest such, so big holes
    stay open for big gangs); else the roomiest nodes, with the remainder on the tightest node that
    holds it. Ties break by name so the result is deterministic.
    """
    if pods <= 0:
        return []
    # The common case, a gang that fits one node, in one linear pass (no sort of every node).
    whole = min(((free[n], n) for n in names if free.get(n, 0) >= need * pods), default=None)
    if whole is not None:
        return [whole[1]] * pods
    slots = [(free[n] // need, free[n], n) for n in names if free.get(n, 0) >= need]
    if sum(s for s, _, _ in slots) < pods:
        return None
    order = sorted(slots, key=lambda x: (-x[0], x[1], x[2]))
    placement: list[str] = []
    left = pods
    for i, (s, _, n) in enumerate(order):
        # order is by slots descending: the nodes that can hold the rest are a prefix of order[i:].
        holders = []
        for candidate in order[i:]:
            if candidate[0] < left:
                break
            holders.append(candidate)
        if holders:
            tightest = min(holders, key=lambda x: (x[1], x[2]))
            return placement + [tightest[2]] * left
        placement += [n] * s
        left -= s
    return None  # unreachable: the slots sum to at least `pods`


def _what(demand: GangDemand, resource: str) -> str:
    """The accelerator in words: the GPU product or the TPU slice the gang asked for, else the resource."""
    sel = demand.node_selector
    if resource == GPU and PRODUCT_LABEL in sel:
        return f"{resource} ({PRODUCT_LABEL}={sel[PRODUCT_LABEL]})"
    if resource == TPU and TPU_ACCELERATOR_LABEL in sel:
        topology = f" {sel[TPU_TOPOLOGY_LABEL]}" if TPU_TOPOLOGY_LABEL in sel else ""
        return f"{resource} ({sel[TPU_ACCELERATOR_LABEL]}{topology})"
    return resource


def _needs(demand: GangDemand, resource: str) -> str:
    need = demand.per_pod[resource]
    return f"needs {demand.pods * need} {_what(demand, resource)}: {demand.pods} pod(s) x {need}"


def _fleet(nodes: Sequence[NodeView], resource: str) -> str:
    """What the cluster has of a resource, grouped by product (GPU) or slice (TPU), for messages."""
    groups: dict[str, list[int]] = {}
    for n in nodes:
        count = n.allocatable.get(resource, 0)
        if count <= 0:
            continue
        if resource == GPU:
            label = n.labels.get(PRODUCT_LABEL, "unlabelled")
        else:
            label = (
                f"{n.labels.get(TPU_ACCELERATOR_LABEL, 'unlabelled')} {n.labels.get(TPU_TOPOLOGY_LABEL, '')}".strip()
            )
        groups.setdefault(label, []).append(count)
    if not groups:
        return f"no node in the cluster has {resource}"
    parts = [f"{label}: {len(c)} node(s), {sum(c)} in all" for label, c in sorted(groups.items())]
    return f"the cluster has {'; '.join(parts)}"


@dataclass
class _Pool:
    """The nodes one kind of gang may use (same resource, selector and tolerations), computed once per decide."""

    resource: str
    matching: list[NodeView]  # every matching node, ready or not
    ready: list[str]  # the matching nodes pods can be scheduled to now
    names: frozenset[str]
    blocked_by: str | None = None  # the first gang ahead that waits for some of these nodes
    _room: dict[tuple[int, str | None], int] = field(default_factory=dict)

    def domains(self, label: str, ready_only: bool) -> dict[str, list[NodeView]]:
        """Matching nodes grouped by the value of `label` (nodes without it belong to no domain)."""
        groups: dict[str, list[NodeView]] = {}
        for n in self.matching:
            if label in n.labels and (n.schedulable or not ready_only):
                groups.setdefault(n.labels[label], []).append(n)
        return groups

    def room(self, need: int, domain: str | None) -> int:
        """Pods of `need` the matching nodes could hold if empty (within one domain, if given)."""
        key = (need, domain)
        if key not in self._room:
            groups = [self.matching] if domain is None else list(self.domains(domain, ready_only=False).values())
            self._room[key] = max(
                (sum(n.allocatable.get(self.resource, 0) // need for n in g) for g in groups), default=0
            )
        return self._room[key]


def _place_gang(demand: GangDemand, need: int, free: Mapping[str, int], pool: _Pool) -> list[str] | None:
    if demand.domain is None:
        return place(need, demand.pods, free, pool.ready)
    # All pods in one domain: the tightest domain that holds the whole gang.
    best: tuple[int, str, list[str]] | None = None
    for value, members in pool.domains(demand.domain, ready_only=True).items():
        names = [n.name for n in members]
        placed = place(need, demand.pods, free, names)
        if placed is not None:
            spare = sum(max(free[n], 0) for n in names)
            if best is None or (spare, value) < best[:2]:
                best = (spare, value, placed)
    return best[2] if best else None


def _can_never_fit(demand: GangDemand, resource: str, pool: _Pool, nodes: Sequence[NodeView]) -> Waiting | None:
    need = demand.per_pod[resource]
    if pool.room(need, demand.domain) >= demand.pods:
        return None
    # It cannot: say why, with the numbers (the slow path runs once per such gang).
    if not pool.matching:
        sel = ", ".join(f"{k}={v}" for k, v in sorted(demand.node_selector.items())) or "none"
        why = f"no node matches its nodeSelector ({sel}) and tolerations; {_fleet(nodes, resource)}"
    elif (biggest := max(n.allocatable.get(resource, 0) for n in pool.matching)) < need:
        why = f"the largest matching node has {biggest}, so a pod can never fit"
    elif demand.domain is not None and pool.room(need, None) >= demand.pods:
        why = (
            f"all pods must share one {demand.domain}; the largest such group of matching nodes has room for "
            f"{pool.room(need, demand.domain)} pod(s), so the job can never run on this cluster"
        )
    else:
        total = sum(n.allocatable.get(resource, 0) for n in pool.matching)
        why = (
            f"the {len(pool.matching)} matching node(s) hold {total} in all, room for at most "
            f"{pool.room(need, None)} such pod(s) even when empty, so the job can never run on this cluster"
        )
    if demand.avoided:
        why += f" (nodes {', '.join(sorted(demand.avoided))} are avoided: status.avoidedNodes)"
    return Waiting(EXCEEDS_CLUSTER, f"{_needs(demand, resource)}; {why}", fatal=True)


def decide(
    nodes: Sequence[NodeView],
    usage: Iterable[Usage],
    admitted: Sequence[GangDemand],
    queue: Sequence[GangDemand],
) -> Decision:
    """Admit queued gangs in order (priority, then age) while they fit.

    A gang that does not fit blocks the lower ones that could use any of its nodes (strict order),
    so a big job is never starved by a stream of small ones; gangs on disjoint nodes (another GPU
    product, TPUs) are not held up. Admitted gangs whose pods are not bound yet keep their room.
    """
    by_name = {n.name: n for n in nodes}
    free: dict[str, dict[str, int]] = {
        r: {n.name: (n.allocatable.get(r, 0) if n.schedulable else 0) for n in nodes} for r in ACCELERATORS
    }
    for u in usage:
        if u.node is None or u.node not in by_name:
            continue
        for r, count in u.requests.items():
            if r in free:
                free[r][u.node] -= count

    pools: dict[tuple[object, ...], _Pool] = {}

    def pool_of(demand: GangDemand, resource: str) -> _Pool:
        sig = (resource, tuple(sorted(demand.node_selector.items())), demand.tolerations, demand.avoided)
        found = pools.get(sig)
        if found is None:
            matching = [n for n in nodes if n.allocatable.get(resource, 0) > 0 and eligible(n, demand)]
            ready = [n.name for n in matching if n.schedulable]
            found = pools[sig] = _Pool(resource, matching, ready, frozenset(ready))
        return found

    decision = Decision()
    blocked: set[str] = set()  # nodes a gang ahead in the queue waits for
    blocker: dict[str, tuple[int, str]] = {}  # node -> (queue position, name) of the first gang waiting for it

    def block(names: Iterable[str], who: str) -> None:
        for name in names:
            blocked.add(name)
            blocker.setdefault(name, (len(blocker), who))

    # Admitted gangs still binding hold room first; one that no longer fits (a pod of someone else
    # took its place) is first in line for its nodes.
    for demand in admitted:
        resource = demand.resource
        if resource is None or demand.pods <= 0:
            continue
        pool = pool_of(demand, resource)
        placed = _place_gang(demand, demand.per_pod[resource], free[resource], pool)
        if placed is None:
            block(pool.names, f"{demand.name} (admitted, still binding)")
            continue
        for node in placed:
            free[resource][node] -= demand.per_pod[resource]
        decision.placements[demand.key] = placed

    for demand in sorted(queue, key=lambda d: (-d.priority, d.created, d.key)):
        resource = demand.resource
        if resource is None:  # no accelerators: nothing to count, the scheduler alone decides
            decision.admit.append(demand.key)
            continue
        pool = pool_of(demand, resource)
        never = _can_never_fit(demand, resource, pool, nodes)
        if never is not None:
            decision.waiting[demand.key] = never
            continue
        if pool.blocked_by is None and (ahead := pool.names & blocked):
            pool.blocked_by = min(blocker[n] for n in ahead)[1]  # blocks only grow: it stays the first
        if pool.blocked_by is not None:
            decision.waiting[demand.key] = Waiting(
                INSUFFICIENT[resource],
                f"{_needs(demand, resource)}; queued behind {pool.blocked_by}, which waits for the same nodes",
            )
            continue
        need = demand.per_pod[resource]
        placed = _place_gang(demand, need, free[resource], pool)
        if placed is None:
            have = [free[resource][n] for n in pool.ready if free[resource][n] > 0]
            room = sum(f // need for f in have)
            unready = len(pool.matching) - len(pool.ready)
            note = f"; {unready} matching node(s) not ready or cordoned" if unready else ""
            decision.waiting[demand.key] = Waiting(
                INSUFFICIENT[resource],
                f"{_needs(demand, resource)}; {sum(have)} free across {len(have)} node(s), room for {room} of "
                f"{demand.pods} pod(s){note}",
            )
            block(pool.names, demand.name)
            continue
        for node in placed:
            free[resource][node] -= need
        decision.admit.append(demand.key)
        decision.placements[demand.key] = placed
    return decision


def never_fits(nodes: Sequence[NodeView], demand: GangDemand) -> Waiting | None:
    """The verdict for a gang before any of its pods exists: fatal when it can never fit the cluster
    (even empty), else None (whether it fits *now* is for decide(), once its gated pods exist)."""
    resource = demand.resource
    if resource is None:
        return None
    matching = [n for n in nodes if n.allocatable.get(resource, 0) > 0 and eligible(n, demand)]
    ready = [n.name for n in matching if n.schedulable]
    return _can_never_fit(demand, resource, _Pool(resource, matching, ready, frozenset(ready)), nodes)
