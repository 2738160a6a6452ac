"""Gang admission as a pure function (phalanx.core.admission.decide) and the admitter's reading of the caches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from phalanx.controller import admitter as admitter_module
from phalanx.controller.admitter import Admitter, prefer_node, shape_of
from phalanx.controller.caches import Caches
from phalanx.core import names
from phalanx.core.admission import (
    GPU,
    PRODUCT_LABEL,
    TPU,
    GangDemand,
    NodeView,
    Usage,
    decide,
    place,
)
from phalanx.core.observe import job_view, pod_view

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def gpu_node(name: str, gpus: int = 8, product: str = H100, ready: bool = True, **labels: str) -> NodeView:
    return NodeView(name, {GPU: gpus}, {PRODUCT_LABEL: product, **labels}, frozenset({GPU}), ready)


def gang(
    name: str,
    pods: int,
    gpus: int = 8,
    priority: int = 0,
    age: int = 0,
    product: str | None = None,
    ns: str = "ns",
) -> GangDemand:
    return GangDemand(
        key=(ns, name),
        priority=priority,
        created=T0 + timedelta(seconds=age),
        pods=pods,
        per_pod={GPU: gpus},
        node_selector={PRODUCT_LABEL: product} if product else {},
        tolerations=frozenset({GPU}),
    )


def cluster(n: int = 4) -> list[NodeView]:
    return [gpu_node(f"gpu-{i}") for i in range(n)]


# --- place: packing --------------------------------------------------------------------------------


def test_place_puts_a_gang_that_fits_one_node_on_the_tightest_such_node() -> None:
    free = {"a": 8, "b": 4, "c": 6}
    assert place(4, 1, free, free) == ["b"]
    assert place(2, 3, free, free) == ["c", "c", "c"]  # fits b? no (2 slots); c (3 slots) is the tightest


def test_place_uses_fewest_nodes_when_no_single_node_holds_the_gang() -> None:
    free = {"a": 8, "b": 8, "c": 4, "d": 4}
    # 3 pods of 4: a holds 2, the last one goes on the tightest node that holds it (c), not b.
    assert place(4, 3, free, free) == ["a", "a", "c"]
    assert place(8, 2, free, free) == ["a", "b"]
    assert place(8, 3, free, free) is None


def test_place_is_deterministic_on_ties() -> None:
    free = {f"n{i}": 8 for i in range(5)}
    assert place(4, 2, free, free) == ["n0", "n0"]


# --- decide ----------------------------------------------------------------------------------------


def test_deadlock_case_admits_one_gang_whole_and_tells_the_other_why() -> None:
    d = decide(cluster(4), [], [], [gang("a", 3, age=0), gang("b", 3, age=1)])
    assert d.admit == [("ns", "a")]
    assert len(d.placements[("ns", "a")]) == 3 and len(set(d.placements[("ns", "a")])) == 3
    waiting = d.waiting[("ns", "b")]
    assert waiting.reason == "InsufficientGPU" and not waiting.fatal
    assert "needs 24 nvidia.com/gpu" in waiting.message and "8 free across 1 node(s)" in waiting.message


def test_capacity_held_by_bound_pods_and_admitted_gangs_is_not_free() -> None:
    usage = [Usage("gpu-0", {GPU: 8}), Usage("gpu-1", {GPU: 8})]
    binding = gang("old", 1)  # admitted, one pod not bound yet
    d = decide(cluster(4), usage, [binding], [gang("b", 2)])
    assert d.admit == []
    assert "8 free across 1 node(s), room for 1 of 2" in d.waiting[("ns", "b")].message
    d = decide(cluster(4), usage, [], [gang("b", 2)])
    assert d.admit == [("ns", "b")] and sorted(d.placements[("ns", "b")]) == ["gpu-2", "gpu-3"]


def test_priority_then_age_orders_admission() -> None:
    queue = [gang("low", 3, priority=0, age=0), gang("high", 3, priority=100, age=2), gang("mid", 3, priority=50)]
    d = decide(cluster(4), [], [], queue)
    assert d.admit == [("ns", "high")]
    assert "8 free across 1 node(s)" in d.waiting[("ns", "mid")].message
    assert "queued behind ns/mid" in d.waiting[("ns", "low")].message


def test_big_gang_that_waits_blocks_smaller_later_ones_on_the_same_nodes() -> None:
    usage = [Usage("gpu-0", {GPU: 8})]
    d = decide(cluster(4), usage, [], [gang("big", 4, age=0), gang("small", 1, age=1)])
    assert d.admit == []  # small would fit, but big came first and needs those nodes
    assert "queued behind ns/big" in d.waiting[("ns", "small")].message


def test_gangs_on_other_nodes_are_not_blocked() -> None:
    nodes = [*cluster(2), gpu_node("a100-0", product=A100)]
    queue = [gang("big", 3, product=H100, age=0), gang("other", 1, product=A100, age=1)]
    d = decide(nodes, [], [], queue)
    assert d.admit == [("ns", "other")] and d.placements[("ns", "other")] == ["a100-0"]
    # The H100 gang sees only H100 nodes: 2 of them, so it can never fit (3 pods x 8).
    assert d.waiting[("ns", "big")].fatal


def test_product_selection_counts_only_that_products_nodes() -> None:
    nodes = [*cluster(2), gpu_node("a100-0", product=A100)]
    usage = [Usage("gpu-0", {GPU: 8})]
    d = decide(nodes, usage, [], [gang("h", 2, product=H100)])
    waiting = d.waiting[("ns", "h")]
    assert waiting.reason == "InsufficientGPU" and f"{PRODUCT_LABEL}={H100}" in waiting.message
    assert "8 free across 1 node(s)" in waiting.message  # the A100's 8 free GPUs are not counted


def test_more_than_the_cluster_has_is_fatal_with_numbers() -> None:
    d = decide(cluster(4), [], [], [gang("huge", 5)])
    w = d.waiting[("ns", "huge")]
    assert w.reason == "ExceedsClusterCapacity" and w.fatal
    assert "needs 40" in w.message and "hold 32 in all" in w.message and "room for at most 4" in w.message


def test_a_pod_bigger_than_any_node_is_fatal() -> None:
    w = decide(cluster(2), [], [], [gang("wide", 1, gpus=16)]).waiting[("ns", "wide")]
    assert w.fatal and "largest matching node has 8" in w.message


def test_unknown_product_is_fatal_and_lists_what_exists() -> None:
    w = decide(cluster(2), [], [], [gang("typo", 1, product="H100")]).waiting[("ns", "typo")]
    assert w.fatal and "no node matches" in w.message and f"{H100}: 2 node(s), 16 in all" in w.message


def test_fragmented_capacity_is_not_fatal() -> None:
    # 4 x 4 free GPUs = 16, but an 8-GPU pod fits none of them: wait (not fatal), say why.
    usage = [Usage(f"gpu-{i}", {GPU: 4}) for i in range(4)]
    w = decide(cluster(4), usage, [], [gang("g", 1)]).waiting[("ns", "g")]
    assert not w.fatal and "16 free across 4 node(s), room for 0 of 1" in w.message


def test_not_ready_nodes_count_for_capacity_but_not_for_placement() -> None:
    nodes = [gpu_node("gpu-0"), gpu_node("gpu-1", ready=False)]
    w = decide(nodes, [], [], [gang("g", 2)]).waiting[("ns", "g")]
    assert not w.fatal and "1 matching node(s) not ready or cordoned" in w.message


def test_admitted_gang_that_lost_its_room_comes_first() -> None:
    usage = [Usage(f"gpu-{i}", {GPU: 8}) for i in range(4)]  # someone else took everything
    d = decide(cluster(4), usage, [gang("binding", 1)], [gang("next", 1)])
    assert d.admit == [] and "ns/binding (admitted, still binding)" in d.waiting[("ns", "next")].message


def test_gang_without_accelerators_is_admitted() -> None:
    cpu = GangDemand(("ns", "cpu"), 0, T0, 4, {}, {}, frozenset())
    assert decide([], [], [], [cpu]).admit == [("ns", "cpu")]


def tpu_node(name: str, pool: str, chips: int = 4) -> NodeView:
    labels = {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x4",
        "cloud.google.com/gke-nodepool": pool,
    }
    return NodeView(name, {TPU: chips}, labels, frozenset({TPU}))


def tpu_gang(name: str, pods: int = 2) -> GangDemand:
    selector = {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x4",
    }
    return GangDemand(
        (("ns", name)), 0, T0, pods, {TPU: 4}, selector, frozenset({TPU}), domain="cloud.google.com/gke-nodepool"
    )


def test_multi_host_tpu_gang_takes_one_whole_slice() -> None:
    nodes = [tpu_node("a-0", "a"), tpu_node("a-1", "a"), tpu_node("b-0", "b"), tpu_node("b-1", "b")]
    usage = [Usage("a-0", {TPU: 4}), Usage("b-1", {TPU: 4})]  # one host busy in each slice
    d = decide(nodes, usage, [], [tpu_gang("t")])
    assert d.admit == []  # 8 chips free, but split across two slices
    assert d.waiting[("ns", "t")].reason == "InsufficientTPU"
    d = decide(nodes, [Usage("a-0", {TPU: 4})], [], [tpu_gang("t")])
    assert d.admit == [("ns", "t")] and d.placements[("ns", "t")] == ["b-0", "b-1"]


def test_tpu_gang_larger_than_any_slice_is_fatal() -> None:
    nodes = [tpu_node("a-0", "a"), tpu_node("a-1", "a"), tpu_node("b-0", "b"), tpu_node("b-1", "b")]
    w = decide(nodes, [], [], [tpu_gang("t", pods=4)]).waiting[("ns", "t")]
    assert w.fatal and "one cloud.google.com/gke-nodepool" in w.message


def test_decide_cost_does_not_depend_on_pods_outside_usage() -> None:
    # Usage holds only bound accelerator pods: at most one per GPU. 500 queued gangs decide in one pass.
    nodes = [gpu_node(f"gpu-{i}") for i in range(100)]
    usage = [Usage(f"gpu-{i}", {GPU: 8}) for i in range(90)]
    queue = [gang(f"j{i}", 2, age=i) for i in range(500)]
    d = decide(nodes, usage, [], queue)
    assert len(d.admit) == 5 and len(d.waiting) == 495


# --- the admitter over fake caches -----------------------------------------------------------------


class FakeKube:
    def __init__(self) -> None:
        self.ungated: list[tuple[str, str, list[dict[str, Any]] | None]] = []

    async def ungate_pod(self, namespace: str, name: str, also: list[dict[str, Any]] | None = None) -> None:
        self.ungated.append((namespace, name, also))


class FakeOperator:
    """What the Admitter reads of the Operator: the kopf indexes (key -> list of values) and a kube."""

    def __init__(self, nodes: list[NodeView]) -> None:
        self.leading = True  # the only replica
        self.kube = FakeKube()
        self.indices: dict[str, dict[Any, list[Any]]] = {
            "job_index": {},
            "pod_index": {},
            "node_index": {n.name: [n] for n in nodes},
            "usage_index": {},
        }
        self.caches = Caches(self.indices)  # reads through to the dict the test changes
        self.enqueued: list[tuple[str, str]] = []

    def add_job(self, name: str, replicas: int, gpus: int, state: str = "Queued", created: int = 0) -> None:
        body = {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": f"uid-{name}",
                "generation": 1,
                "resourceVersion": "1",
                "creationTimestamp": (T0 + timedelta(seconds=created)).isoformat(),
            },
            "spec": {
                "framework": "pytorch",
                "replicas": replicas,
                "resources": {"gpus": gpus},
                "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}},
            },
            "status": {"attempt": 1, "state": state},
        }
        self.indices["job_index"][("ns", name)] = [body]

    def add_pod(self, job: str, index: int, gated: bool = True, node: str | None = None) -> None:
        body = {
            "metadata": {
                "name": f"{job}-worker-{index}",
                "labels": {names.LABEL_JOB: job, names.LABEL_INDEX: str(index), names.LABEL_ATTEMPT: "1"},
            },
            "spec": {"schedulingGates": [{"name": names.GANG_GATE}]} if gated else {"nodeName": node},
            "status": {"phase": "Running" if node else "Pending"},
        }
        self.indices["pod_index"].setdefault(("ns", job), []).append({"view": pod_view(body), "owner": f"uid-{job}"})
        if node:
            self.indices["usage_index"][("ns", body["metadata"]["name"])] = [Usage(node, {GPU: 8})]

    def pods_of(self, key: tuple[str, str], uid: str) -> list[Any]:
        return [e["view"] for e in self.indices["pod_index"].get(key, []) if e["owner"] == uid]

    def priority(self, class_name: str | None) -> int:
        return 0

    def enqueue(self, key: tuple[str, str]) -> None:
        self.enqueued.append(key)


def preferred_node(ops: list[dict[str, Any]] | None) -> str:
    assert ops is not None and ops[0]["path"] == "/spec/affinity/nodeAffinity"
    term = ops[0]["value"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["weight"] == 100
    return str(term["preference"]["matchFields"][0]["values"][0])


def run(op: FakeOperator, admitter: Admitter | None = None) -> Admitter:
    a = admitter or Admitter(op)  # type: ignore[arg-type]
    asyncio.run(a.admit_once())
    return a


def test_admitter_lifts_whole_gang_with_node_preferences_and_notes_the_other() -> None:
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    for job, created in (("a", 0), ("b", 1)):
        op.add_job(job, 3, 8, created=created)
        for i in range(3):
            op.add_pod(job, i)
    a = run(op)
    assert sorted(name for _, name, _ in op.kube.ungated) == ["a-worker-0", "a-worker-1", "a-worker-2"]
    preferred = [preferred_node(also) for _, _, also in op.kube.ungated]
    assert sorted(preferred) == ["gpu-0", "gpu-1", "gpu-2"]  # one pod per node, as planned
    assert a.notes[("ns", "b")].reason == "InsufficientGPU"
    # Next round with the cache still showing a's gates: a is not admitted again, nor re-patched yet.
    op.kube.ungated.clear()
    run(op, a)
    assert op.kube.ungated == []


def test_restarted_admitter_finishes_a_half_lifted_gang_and_never_requeues_it() -> None:
    # A crash after lifting one of three gates: pod 0 bound, pods 1 and 2 still gated.
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    op.add_job("a", 3, 8, state="Starting", created=0)
    op.add_pod("a", 0, gated=False, node="gpu-0")
    op.add_pod("a", 1)
    op.add_pod("a", 2)
    op.add_job("b", 2, 8, created=1)
    op.add_pod("b", 0)
    op.add_pod("b", 1)
    a = run(op)  # a fresh Admitter: nothing in memory
    assert sorted(name for _, name, _ in op.kube.ungated) == ["a-worker-1", "a-worker-2"]
    # a's 2 unbound pods keep 2 nodes; b (2 x 8) sees 1 free node and waits.
    assert a.notes[("ns", "b")].reason == "InsufficientGPU"
    assert "8 free across 1 node(s)" in a.notes[("ns", "b")].message


def test_settled_jobs_are_skipped_without_parsing() -> None:
    op = FakeOperator([gpu_node("gpu-0")])
    op.add_job("done", 1, 8, state="Running")
    op.add_pod("done", 0, gated=False, node="gpu-0")
    a = run(op)
    assert a.notes == {} and op.kube.ungated == [] and a._jobs == {}


class CountingDict(dict[Any, Any]):
    reads = 0

    def values(self) -> Any:
        self.reads += 1
        return super().values()


def test_admitter_reads_nodes_only_while_some_gang_waits() -> None:
    op = FakeOperator([gpu_node("gpu-0"), gpu_node("gpu-1")])
    nodes = op.indices["node_index"] = CountingDict(op.indices["node_index"])
    op.add_job("done", 1, 8, state="Running")
    op.add_pod("done", 0, gated=False, node="gpu-0")
    run(op)
    assert nodes.reads == 0  # 1000 live jobs and nothing queued: a pass is a scan of the jobs only
    op.add_job("new", 1, 8)
    op.add_pod("new", 0)
    run(op)
    assert nodes.reads == 1 and [name for _, name, _ in op.kube.ungated] == ["new-worker-0"]


def test_node_events_wake_the_admitter_only_when_admission_inputs_change() -> None:
    a = Admitter(FakeOperator([]))  # type: ignore[arg-type]
    a.node_changed("gpu-0", gpu_node("gpu-0"))
    assert a._wake.is_set()  # a new node
    a._wake.clear()
    a.node_changed("gpu-0", gpu_node("gpu-0"))
    assert not a._wake.is_set()  # a heartbeat: nothing admission reads changed
    a.node_changed("gpu-0", gpu_node("gpu-0", ready=False))
    assert a._wake.is_set()
    a._wake.clear()
    a.node_changed("gpu-0", None)
    assert a._wake.is_set()  # deleted


def test_prefer_node_patch_paths() -> None:
    assert prefer_node({}, "n")[0]["path"] == "/spec/affinity"
    assert prefer_node({"podAffinity": {}}, "n")[0]["path"] == "/spec/affinity/nodeAffinity"
    assert prefer_node({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}, "n")[0][
        "path"
    ].endswith("/preferredDuringSchedulingIgnoredDuringExecution")
    assert prefer_node({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}, "n")[0][
        "path"
    ].endswith("/-")


def test_shape_of_tpu_job_requires_one_node_pool() -> None:
    body = {
        "metadata": {"name": "t", "namespace": "ns", "uid": "u", "creationTimestamp": T0.isoformat()},
        "spec": {
            "framework": "tensorflow",
            "strategy": "tpu",
            "replicas": 2,
            "resources": {"tpu": {"accelerator": "tpu-v5-lite-podslice", "topology": "2x4"}},
            "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}},
        },
        "status": {"attempt": 1},
    }
    shape = shape_of(job_view(body))
    assert shape.per_pod == {TPU: 4} and shape.domain == "cloud.google.com/gke-nodepool"
    assert shape.node_selector["cloud.google.com/gke-tpu-topology"] == "2x4"


@pytest.mark.parametrize("state", sorted(admitter_module.SETTLED_STATES))
def test_may_wait_is_false_for_settled_states(state: str) -> None:
    assert not admitter_module.may_wait({"metadata": {}, "status": {"attempt": 1, "state": state}})


def test_waiting_message_refresh_is_rate_limited_but_a_new_reason_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(admitter_module.time, "monotonic", lambda: clock[0])
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    op.add_job("a", 1, 8, state="Running")
    op.add_pod("a", 0, gated=False, node="gpu-0")
    op.add_job("b", 4, 8, created=1)
    for i in range(4):
        op.add_pod("b", i)
    a = run(op)
    assert "24 free across 3 node(s)" in a.notes[("ns", "b")].message
    op.indices["usage_index"][("ns", "other")] = [Usage("gpu-1", {GPU: 8})]  # someone else took a node
    op.enqueued.clear()
    run(op, a)
    assert "24 free" in a.notes[("ns", "b")].message and op.enqueued == []  # same reason: not yet
    clock[0] += admitter_module.NOTE_REFRESH_SECONDS
    run(op, a)
    assert "16 free across 2 node(s)" in a.notes[("ns", "b")].message and op.enqueued == [("ns", "b")]


def body_of(op: FakeOperator, job: str) -> dict[str, Any]:
    return op.indices["job_index"][("ns", job)][0]  # type: ignore[no-any-return]


def set_status(op: FakeOperator, job: str, status: dict[str, Any]) -> None:
    body = body_of(op, job)
    body["status"] = status
    body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)


def test_a_gang_that_fits_is_admitted_as_it_is_created_and_keeps_its_room_before_the_cache_shows_it() -> None:
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    a = Admitter(op)  # type: ignore[arg-type]
    op.add_job("a", 3, 8)
    set_status(op, "a", {})  # the cache still shows the job before attempt 1 was written
    placed = a.admit_at_create(("ns", "a"), body_of(op, "a"), 1, 3)
    assert placed is not None and sorted(placed) == ["gpu-0", "gpu-1", "gpu-2"]
    # Neither a's pods nor its attempt are in the cache yet: b (2 x 8) must not get a's nodes.
    op.add_job("b", 2, 8, created=1)
    set_status(op, "b", {})
    assert a.admit_at_create(("ns", "b"), body_of(op, "b"), 1, 2) is None
    # The cache shows a's attempt, its pods not yet: still booked (now through the pods it misses).
    set_status(op, "a", {"attempt": 1, "state": "Starting"})
    assert a.admit_at_create(("ns", "b"), body_of(op, "b"), 1, 2) is None
    assert ("ns", "a") not in a._booked
    # a's pods appear, ungated, unbound: the loop lifts nothing and b, queued gated, still waits.
    for i in range(3):
        op.add_pod("a", i, gated=False)
    set_status(op, "b", {"attempt": 1, "state": "Queued"})
    op.add_pod("b", 0)
    op.add_pod("b", 1)
    run(op, a)
    assert op.kube.ungated == []
    assert a.notes[("ns", "b")].reason == "InsufficientGPU"


def test_no_admission_at_creation_while_another_gang_waits_or_when_it_does_not_fit() -> None:
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    a = Admitter(op)  # type: ignore[arg-type]
    op.add_job("big", 5, 8)  # waits, gated: more than the 4 nodes are free
    for i in range(5):
        op.add_pod("big", i)
    op.add_job("small", 1, 8, created=1)
    assert a.admit_at_create(("ns", "small"), body_of(op, "small"), 1, 1) is None  # big is first in line
    del op.indices["job_index"][("ns", "big")], op.indices["pod_index"][("ns", "big")]
    op.add_job("huge", 5, 8, created=2)
    assert a.admit_at_create(("ns", "huge"), body_of(op, "huge"), 1, 5) is None  # does not fit: created gated
    assert a.admit_at_create(("ns", "small"), body_of(op, "small"), 1, 1) == ["gpu-0"]


def test_a_gang_whose_creates_a_crash_cut_short_keeps_room_for_the_missing_pods() -> None:
    # A crash after creating 1 of 3 pods ungated: a fresh admitter counts all 3 as admitted.
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    op.add_job("a", 3, 8, state="Starting")
    op.add_pod("a", 0, gated=False)
    op.add_job("b", 2, 8, created=1)
    op.add_pod("b", 0)
    op.add_pod("b", 1)
    a = run(op)
    assert op.kube.ungated == []
    assert a.notes[("ns", "b")].reason == "InsufficientGPU"
    assert a.admit_at_create(("ns", "a"), body_of(op, "a"), 1, 2) is None  # part of a gang: the loop's


def test_a_younger_gang_is_not_admitted_at_creation_ahead_of_an_older_one_not_yet_created() -> None:
    # a (older) has no pods and no attempt yet; b reaches creation first: the loop must order them.
    op = FakeOperator([gpu_node(f"gpu-{i}") for i in range(4)])
    a = Admitter(op)  # type: ignore[arg-type]
    op.add_job("a", 3, 8, created=0)
    set_status(op, "a", {})
    op.add_job("b", 3, 8, created=1)
    assert a.admit_at_create(("ns", "b"), body_of(op, "b"), 1, 3) is None
    assert a.admit_at_create(("ns", "a"), body_of(op, "a"), 1, 3) is not None  # b is behind a
