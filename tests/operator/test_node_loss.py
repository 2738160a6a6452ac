"""Node loss against the real control plane: a kwok node deleted, or made unreachable the way the node
lifecycle controller marks one, under a running gang. Each test adds its own nodes of a GPU product no
other test uses, so its gang can only land there, and deletes them afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from localcluster.nodes import add_nodes, delete_nodes, gpu_pool
from tests.plugins.operator import JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def pool(core_v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[tuple[str, list[str]]]:
    """Three 8-GPU nodes of a product of this test's own: (product, node names)."""
    name = f"loss{abs(hash(request.node.name)) % 10**6}"
    product = f"NVIDIA-LOSS-{name.upper()}"
    names = add_nodes(core_v1, gpu_pool(name, count=3, product=product))
    yield product, names
    delete_nodes(core_v1, names)


def make_unreachable(core: client.CoreV1Api, node: str) -> None:
    """What the node lifecycle controller does when a kubelet stops posting status: Ready=Unknown and the
    unreachable taints. kwok first lets go of the node (it manages only annotated nodes), so its
    heartbeats stop and nothing sets Ready back, and its pods are left as they were: Running."""
    core.patch_node(node, {"metadata": {"annotations": {"kwok.x-k8s.io/node": None}}})
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ready = {
        "type": "Ready",
        "status": "Unknown",
        "reason": "NodeStatusUnknown",
        "message": "Kubelet stopped posting node status.",
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }
    core.patch_node_status(node, {"status": {"conditions": [ready]}})
    old = [core.api_client.sanitize_for_serialization(t) for t in core.read_node(node).spec.taints or []]
    have = {(t["key"], t["effect"]) for t in old}  # the controller itself may have added some already
    taints = [
        {"key": "node.kubernetes.io/unreachable", "effect": effect, "timeAdded": now}
        for effect in ("NoSchedule", "NoExecute")
        if ("node.kubernetes.io/unreachable", effect) not in have
    ]
    core.patch_node(node, {"spec": {"taints": old + taints}})


def gang_job(name: str, product: str, **run_policy: Any) -> dict[str, Any]:
    return job_manifest(name, replicas=2, resources={"gpus": 8, "gpuProduct": product}, runPolicy=run_policy)


def running_gang(jobs: JobClient, name: str, attempt: int) -> list[client.V1Pod]:
    def check(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 2 and all(
            p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None
            and p.metadata.labels["phalanx.dev/attempt"] == str(attempt)
            for p in pods
        )

    return jobs.wait_pods(name, check, timeout=60, what=f"attempt {attempt} running")


def node_lost(core: client.CoreV1Api, namespace: str, job: str) -> str | None:
    """The message of the job's NodeLost Event. Not the Restarting condition: with per-attempt pod
    names the next gang can run, and the condition turn False again, between two polls."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={job}").items
    return next((e.message for e in events if e.reason == "NodeLost"), None)


def wait_node_lost(core: client.CoreV1Api, namespace: str, job: str, what: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = node_lost(core, namespace, job)
        if message is not None:
            return message
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} on {namespace}/{job}")


def test_deleted_node_restarts_the_gang_on_the_other_nodes(
    jobs: JobClient, core_v1: client.CoreV1Api, namespace: str, pool: tuple[str, list[str]]
) -> None:
    product, _ = pool
    jobs.create(gang_job("lost", product))
    first = running_gang(jobs, "lost", 1)
    victim = first[1].spec.node_name
    core_v1.delete_node(victim)
    pods = running_gang(jobs, "lost", 2)
    assert victim not in {p.spec.node_name for p in pods}
    job = jobs.get("lost")
    assert job["status"]["restarts"] == 1
    # The cause is in the Event of the restart (the Restarting condition is False again once the gang runs).
    events = [e for e in core_v1.list_namespaced_event(namespace).items if e.reason == "NodeLost"]
    assert len(events) == 1 and events[0].type == "Warning"
    assert events[0].message.startswith(f"node {victim} was deleted under pod lost-a1-worker-1; restarting all 2 pods")


def test_unreachable_node_past_the_grace_restarts_the_gang(
    jobs: JobClient, core_v1: client.CoreV1Api, pool: tuple[str, list[str]]
) -> None:
    product, _ = pool
    jobs.create(gang_job("dark", product, nodeLostGraceSeconds=2))
    victim = running_gang(jobs, "dark", 1)[0].spec.node_name
    make_unreachable(core_v1, victim)
    message = wait_node_lost(core_v1, jobs.ns, "dark", "restart as NodeLost after the 2 s grace")
    assert f"node {victim} has been NotReady for" in message and "(NodeStatusUnknown)" in message
    pods = running_gang(jobs, "dark", 2)
    # The pod on the unreachable node was force-deleted: kwok no longer plays its kubelet, so a graceful
    # delete would have left it Terminating, and the gang barrier waiting, until the taint manager.
    assert victim not in {p.spec.node_name for p in pods}


def test_unreachable_node_within_the_grace_keeps_the_gang_until_it_ends(
    jobs: JobClient, core_v1: client.CoreV1Api, pool: tuple[str, list[str]]
) -> None:
    product, _ = pool
    jobs.create(gang_job("patient", product, nodeLostGraceSeconds=3600))
    first = running_gang(jobs, "patient", 1)
    make_unreachable(core_v1, first[0].spec.node_name)
    # The node event wakes the job at once; within the grace a node may come back, so the gang is kept.
    time.sleep(5)
    same = running_gang(jobs, "patient", 1)
    assert [p.metadata.uid for p in same] == [p.metadata.uid for p in first]
    assert node_lost(core_v1, jobs.ns, "patient") is None
    # Shortening the grace (a spec change) makes the same node lost at once.
    jobs.patch("patient", {"spec": {"runPolicy": {"nodeLostGraceSeconds": 1}}})
    wait_node_lost(core_v1, jobs.ns, "patient", "NodeLost once the grace is 1 s")
    running_gang(jobs, "patient", 2)
