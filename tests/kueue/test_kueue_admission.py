"""TrainingJobs admitted by real Kueue (core/kueue.py): a Workload per attempt, Kueue's quota decides.

Two 16-GPU jobs on a ClusterQueue of 16 GPUs over the kwok H100 nodes: Kueue admits one; the other
waits with Kueue's own reason and message, none of its pods ever bound; when the first ends, Kueue
admits the second and the ResourceFlavor's node labels and tolerations reach its pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import wait_for
from tests.kueue.queues import GROUP, H100, VERSION, drop_queue, make_queue
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import PodWatch, gpu_job

pytestmark = pytest.mark.kueue
ZONE = "topology.kubernetes.io/zone"
# The flavor's own toleration (the pods' GPU toleration phalanx adds anyway).
RESERVED = {"key": "example.com/reserved", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"}


@pytest.fixture
def queue(api_client: client.ApiClient, namespace: str) -> Iterator[tuple[str, str]]:
    """A LocalQueue `team` in the namespace, on a ClusterQueue of 16 GPUs in one ResourceFlavor: the
    H100 nodes of zone us-central1-a (2 of the default profile's 4, 8 GPUs each). Yields (flavor, zone)."""
    name, zone = f"h100-a-{namespace}", "us-central1-a"
    make_queue(client.CustomObjectsApi(api_client), namespace, name, {"nvidia.com/gpu": "16"},
               node_labels={**H100, ZONE: zone}, tolerations=[RESERVED])  # fmt: skip
    yield name, zone
    drop_queue(api_client, namespace, name)


def admitted(jobs: JobClient, name: str) -> dict[str, Any]:
    return jobs.condition(name, "Admitted") or {}


def test_kueue_admits_one_gang_and_the_other_waits_with_kueues_message(
    operator: Any, jobs: JobClient, core_v1: client.CoreV1Api, namespace: str, queue: tuple[str, str]
) -> None:
    flavor, zone = queue
    with PodWatch(core_v1, namespace) as watch:
        jobs.create(gpu_job("first", replicas=2, scheduling={"queueName": "team"}))
        first = jobs.wait_state("first", "Running", timeout=120)
        assert admitted(jobs, "first")["reason"] == "AdmittedByKueue"

        def reported_ready() -> bool:
            wl = jobs.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", "first-a1")
            return any(c["type"] == "PodsReady" and c["status"] == "True" for c in wl["status"]["conditions"])

        wait_for(reported_ready, timeout=30, what="PodsReady=True on the first job's Workload")
        jobs.create(gpu_job("second", replicas=2, scheduling={"queueName": "team"}))

        def waits_for_quota() -> dict[str, Any] | None:
            c = admitted(jobs, "second")
            return c if c.get("status") == "False" and "insufficient" in c.get("message", "") else None

        waiting = wait_for(waits_for_quota, timeout=60, what="second job waiting with Kueue's quota message")
        assert waiting["reason"] == "Pending"  # Kueue's QuotaReserved reason, verbatim
        assert "nvidia.com/gpu" in waiting["message"] and flavor in waiting["message"], waiting["message"]
        assert jobs.get("second")["status"]["state"] == "Queued"
        second_pods = jobs.pods("second")
        assert len(second_pods) == 2 and all(p.spec.scheduling_gates for p in second_pods)

        # The first ends: its Workload goes, its quota returns, and Kueue admits the second.
        succeed = {"metadata": {"annotations": {"sim.phalanx.dev/outcome": "succeed"}}}
        for p in jobs.pods("first"):
            core_v1.patch_namespaced_pod(p.metadata.name, namespace, succeed)
        jobs.wait_state("first", "Succeeded", timeout=60)
        jobs.wait_state("second", "Running", timeout=120)
        assert admitted(jobs, "second")["reason"] == "AdmittedByKueue"

    assert first["status"]["attempt"] == 1
    assert not watch.bound_at_once("first", "second")  # no pod of the unadmitted job was ever bound
    for p in jobs.pods("second"):
        assert p.spec.node_selector[ZONE] == zone
        assert p.spec.node_selector["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        tolerations = [(t.key, t.operator, t.value, t.effect) for t in p.spec.tolerations]
        assert tuple(RESERVED.values()) in tolerations, tolerations
        node = core_v1.read_node(p.spec.node_name)
        assert node.metadata.labels[ZONE] == zone, p.spec.node_name
    left = jobs.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
    assert [w["metadata"]["name"] for w in left] == ["second-a1"]  # the finished job's Workload is gone
