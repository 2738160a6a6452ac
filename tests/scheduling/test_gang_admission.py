"""Gang admission against the real kube-scheduler on the default profile: 4 H100 nodes x 8 GPUs.

The deadlock case is shown twice: once with gang admission switched off (the failure mode users
hit with plain pods), once with it on (one gang runs whole, the other waits and says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from localcluster import sim
from localcluster.testing import wait_for
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import PodWatch, all_running, gpu_job

pytestmark = pytest.mark.usefixtures("operator")


def succeed_all(jobs: JobClient, namespace: str, name: str) -> None:
    for p in jobs.pods(name):
        sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)


def admitted(jobs: JobClient, name: str) -> dict[str, Any] | None:
    return jobs.condition(name, "Admitted")


def unschedulable(pod: Any) -> bool:
    return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in pod.status.conditions or [])


def wait_admission(jobs: JobClient, name: str, reason: str) -> dict[str, Any]:
    """Wait for Admitted=False with `reason` (until the admitter's first note the reason is WaitingForAdmission)."""
    job = jobs.wait(
        name,
        lambda j: any(
            c["type"] == "Admitted" and c["status"] == "False" and c["reason"] == reason
            for c in (j.get("status") or {}).get("conditions", [])
        ),
        what=f"Admitted=False reason {reason}",
    )
    return next(c for c in job["status"]["conditions"] if c["type"] == "Admitted")


def test_without_gang_admission_two_gangs_half_place_and_deadlock(
    jobs: JobClient, namespace: str, priority_classes: Callable[[str, int], str]
) -> None:
    """The failure mode (documented, not wanted): plain pods of two 3 x 8-GPU jobs on 32 GPUs.

    Capacity frees up in steps, as on a busy cluster: job a starts while only 2 nodes are free;
    when a 2-node job ends, the scheduler gives the freed nodes to the higher-priority job b. Each
    job now holds 16 GPUs, needs 24, and waits for the other forever.
    """
    urgent = priority_classes(f"{namespace}-urgent", 1000)
    off = {"gang": False}
    jobs.create(gpu_job("x-blocker", 2, scheduling=off))
    jobs.wait_pods("x-blocker", all_running(2))
    jobs.create(gpu_job("a", 3, scheduling=off))
    jobs.wait_pods("a", lambda ps: sum(1 for p in ps if p.spec.node_name) == 2, what="2 of a's pods bound")
    jobs.create(gpu_job("b", 3, scheduling={**off, "priorityClassName": urgent}))
    jobs.wait_pods(
        "b",
        lambda ps: len(ps) == 3 and all(unschedulable(p) for p in ps),
        what="b's pods created and found unschedulable",
    )
    # Past kube-scheduler's longest retry backoff (10 s), every pending pod is retried at once when
    # nodes free up, in priority order: the freed nodes go to b, as they would on a busy cluster.
    time.sleep(11)
    succeed_all(jobs, namespace, "x-blocker")

    def half_placed(pods: list[Any]) -> bool:
        return len(pods) == 3 and sum(1 for p in pods if p.spec.node_name) == 2

    jobs.wait_pods("b", half_placed, timeout=60, what="b half placed")
    a_pods = jobs.wait_pods("a", half_placed, what="a half placed")
    # Both jobs hold GPUs; neither can run; the scheduler says why for the pods left over.
    for name in ("a", "b"):
        job = jobs.wait(
            name,
            lambda j: any(
                c["type"] == "Running" and c["status"] == "False" and c["reason"] == "Unschedulable"
                for c in (j.get("status") or {}).get("conditions", [])
            ),
            what="Running=False reason Unschedulable",
        )
        assert job["status"]["state"] != "Running"
    assert any("Insufficient nvidia.com/gpu" in (jobs.condition(n, "Running") or {})["message"] for n in ("a", "b"))
    assert next(p for p in a_pods if not p.spec.node_name).spec.scheduling_gates is None


def test_gang_admission_runs_one_gang_whole_and_the_other_after_it(
    jobs: JobClient, namespace: str, pod_watch: PodWatch
) -> None:
    jobs.create(gpu_job("a", 3))
    jobs.create(gpu_job("b", 3))
    # The first gang whose pods all exist is admitted: under load that can be b (created a moment later).
    # Generous waits: on a loaded 2-core machine the scheduler and kwok lag (no timing is asserted).
    one_running = lambda _: any(all_running(3)(jobs.pods(n)) for n in ("a", "b"))  # noqa: E731
    jobs.wait("a", one_running, timeout=180, what="one gang running")
    first = "a" if all_running(3)(jobs.pods("a")) else "b"
    second = "b" if first == "a" else "a"
    first_pods = jobs.pods(first)
    assert len({p.spec.node_name for p in first_pods}) == 3
    jobs.wait_state(first, "Running")
    cond = wait_admission(jobs, second, "InsufficientGPU")
    assert jobs.get(second)["status"]["state"] == "Queued"
    assert "needs 24 nvidia.com/gpu" in cond["message"] and "3 pod(s) x 8" in cond["message"]
    assert "8 free across 1 node(s), room for 1 of 3 pod(s)" in cond["message"]
    second_pods = jobs.pods(second)
    assert len(second_pods) == 3 and all(p.spec.scheduling_gates and not p.spec.node_name for p in second_pods)

    succeed_all(jobs, namespace, first)
    jobs.wait_state(first, "Succeeded")
    second_pods = jobs.wait_pods(second, all_running(3), timeout=180, what="the second running after the first")
    assert len({p.spec.node_name for p in second_pods}) == 3
    jobs.wait_state(second, "Running")  # the status write that follows the pods (it lags them under load)
    assert admitted(jobs, second)["reason"] == "GangAdmitted"  # type: ignore[index]

    # Nothing was ever half placed: no pod of either gang was ever left unschedulable, and the two
    # gangs never held GPUs at the same time.
    assert pod_watch.unschedulable() == []
    assert not pod_watch.bound_at_once("a", "b")


def test_gangs_are_admitted_in_priority_order(
    jobs: JobClient, namespace: str, priority_classes: Callable[[str, int], str], pod_watch: PodWatch
) -> None:
    classes = {
        level: priority_classes(f"{namespace}-{level}", value)
        for level, value in (("low", 100), ("mid", 200), ("high", 300))
    }
    jobs.create(gpu_job("blocker", 4))
    jobs.wait_pods("blocker", all_running(4))
    # Created oldest first in the reverse of their priority: age alone would run low first.
    for level in ("low", "mid", "high"):
        jobs.create(gpu_job(level, 3, scheduling={"priorityClassName": classes[level]}))
    for level in ("low", "mid", "high"):
        wait_admission(jobs, level, "InsufficientGPU")
    # low waits behind a higher gang (its message may first have counted free GPUs, before the
    # others were queued; same-reason messages are refreshed every 10 s).
    jobs.wait("low", lambda _: "queued behind" in (admitted(jobs, "low") or {}).get("message", ""), what="queued")

    # Each time the running gang ends, exactly one more starts: the highest priority left.
    order: list[str] = []
    finishing = "blocker"
    for _ in range(3):
        succeed_all(jobs, namespace, finishing)
        left = [n for n in ("low", "mid", "high") if n not in order]
        (finishing,) = wait_for(lambda: running_among(jobs, left), timeout=60, what=f"one of {left} running")  # noqa: B023
        jobs.wait_pods(finishing, all_running(3))
        order.append(finishing)
    assert order == ["high", "mid", "low"]
    assert pod_watch.unschedulable() == []


def running_among(jobs: JobClient, names: list[str]) -> list[str]:
    return [n for n in names if (jobs.get(n).get("status") or {}).get("state") == "Running"]


def test_job_that_can_never_fit_fails_at_once(jobs: JobClient) -> None:
    jobs.create(gpu_job("huge", 5))  # 40 GPUs; the cluster has 32
    job = jobs.wait_state("huge", "Failed", timeout=20)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ExceedsClusterCapacity"
    assert "needs 40 nvidia.com/gpu" in failed["message"]
    assert "hold 32 in all, room for at most 4 such pod(s)" in failed["message"]
    # Judged before any pod is created: none exists, and none was ever created and then removed.
    assert jobs.pods("huge") == []
    created = [e for e in jobs.core.list_namespaced_event(jobs.ns).items if e.involved_object.name == "huge"]
    assert "CreatedPods" not in {e.reason for e in created}


def test_unknown_gpu_product_fails_at_once_naming_the_products_there_are(jobs: JobClient) -> None:
    jobs.create(gpu_job("typo", 1, resources={"gpuProduct": "H100"}))
    job = jobs.wait_state("typo", "Failed", timeout=20)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ExceedsClusterCapacity"
    assert "no node matches its nodeSelector (nvidia.com/gpu.product=H100)" in failed["message"]
    assert "NVIDIA-H100-80GB-HBM3: 4 node(s), 32 in all" in failed["message"]


def test_gang_packs_onto_one_node_when_one_has_room(jobs: JobClient) -> None:
    jobs.create(gpu_job("other", 1, gpus=4))
    (other,) = jobs.wait_pods("other", all_running(1))
    jobs.create(gpu_job("pair", 2, gpus=4))
    pods = jobs.wait_pods("pair", all_running(2))
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 1, nodes
    # Best fit: not onto the half-used node (its 4 free GPUs fit only one of the pair).
    assert nodes != {other.spec.node_name}
