"""TPU jobs on simulated GKE TPU node pools: a v5e 2x4 slice of 2 hosts x 4 chips (default profile)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from localcluster.profiles import NodePool, Taint
from tests.plugins.operator import JobClient, job_manifest
from tests.scheduling.conftest import PodWatch, all_running

pytestmark = pytest.mark.usefixtures("operator")

ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY = "cloud.google.com/gke-tpu-topology"
NODE_POOL = "cloud.google.com/gke-nodepool"


def tpu_job(name: str, replicas: int = 2, topology: str = "2x4") -> dict[str, Any]:
    return job_manifest(
        name,
        replicas=replicas,
        framework="tensorflow",
        strategy="tpu",
        resources={"tpu": {"accelerator": "tpu-v5-lite-podslice", "topology": topology}},
    )


def slice_pool(name: str) -> NodePool:
    """A second 2x4 slice: two more 4-chip hosts in a node pool of their own."""
    return NodePool(
        name=name,
        count=2,
        zones=("us-central1-a",),
        labels={
            ACCELERATOR: "tpu-v5-lite-podslice",
            TOPOLOGY: "2x4",
            NODE_POOL: name,
            "node.kubernetes.io/instance-type": "ct5lp-hightpu-4t",
        },
        taints=(Taint("google.com/tpu", "present", "NoSchedule"),),
        capacity={"cpu": "112", "memory": "192Gi", "pods": "110", "google.com/tpu": "4"},
    )


def test_tpu_job_lands_on_the_tpu_slice_with_selectors_chips_and_env(jobs: JobClient, namespace: str) -> None:
    jobs.create(tpu_job("tpu"))
    pods = jobs.wait_pods("tpu", all_running(2))
    jobs.wait_state("tpu", "Running")
    assert sorted(p.spec.node_name for p in pods) == ["tpu-v5e-0", "tpu-v5e-1"]
    hosts = f"tpu-worker-0.tpu.{namespace}.svc,tpu-worker-1.tpu.{namespace}.svc"
    for i, p in enumerate(pods):
        assert p.spec.node_selector == {ACCELERATOR: "tpu-v5-lite-podslice", TOPOLOGY: "2x4"}
        trainer = p.spec.containers[0]
        assert trainer.resources.limits["google.com/tpu"] == "4" == trainer.resources.requests["google.com/tpu"]
        env = {e.name: e.value for e in trainer.env}
        assert env["TPU_WORKER_ID"] == str(i) and env["TPU_WORKER_HOSTNAMES"] == hosts
        assert env["TPU_ACCELERATOR_TYPE"] == "v5litepod-8" and env["TPU_TOPOLOGY"] == "2x4"


def test_multi_host_tpu_gang_takes_one_whole_slice(
    jobs: JobClient,
    namespace: str,
    core_v1: client.CoreV1Api,
    extra_nodes: Callable[[NodePool], list[str]],
    pod_watch: PodWatch,
) -> None:
    second = extra_nodes(slice_pool("tpu-slice-b"))
    # Someone else's pod holds one host of the first slice: 4 chips are free there, 8 in the second.
    other = {
        "metadata": {"name": "not-ours"},
        "spec": {
            "nodeName": "tpu-v5e-0",
            "tolerations": [{"key": "google.com/tpu", "operator": "Exists"}],
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {"google.com/tpu": "4"}}}],
        },
    }
    core_v1.create_namespaced_pod(namespace, other)
    jobs.create(tpu_job("tpu"))
    pods = jobs.wait_pods("tpu", all_running(2))
    # 12 chips are free in all, but only the second slice holds both hosts of the gang.
    assert sorted(p.spec.node_name for p in pods) == sorted(second)
    assert pod_watch.unschedulable() == []  # no host was ever stranded in the wrong slice


def test_topology_replica_mismatch_is_refused_with_a_clear_message(jobs: JobClient) -> None:
    jobs.create(tpu_job("odd", replicas=3))
    job = jobs.wait_state("odd", "Failed", timeout=20)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert (
        "spec.replicas: TPU topology 2x4 on tpu-v5-lite-podslice is 1 host(s) of 8 chips or 2 host(s) of 4 chips "
        "(one pod per host), so replicas must be 1 or 2, not 3"
    ) in failed["message"]
    assert jobs.pods("odd") == []
