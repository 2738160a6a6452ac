"""GPU product selection with a second product in the cluster (an A100 node added to the 4 H100 nodes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from localcluster import sim
from localcluster.nodes import gpu_pool
from localcluster.profiles import NodePool
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import PodWatch, all_running, gpu_job
from tests.scheduling.test_gang_admission import wait_admission

pytestmark = pytest.mark.usefixtures("operator")

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def test_h100_jobs_never_land_on_another_products_nodes(
    jobs: JobClient, namespace: str, extra_nodes: Callable[[NodePool], list[str]], pod_watch: PodWatch
) -> None:
    (a100_node,) = extra_nodes(gpu_pool("a100", count=1, product=A100))
    h100 = {"gpuProduct": H100}
    jobs.create(gpu_job("blocker", 2, resources=h100))
    jobs.wait_pods("blocker", all_running(2))
    # 16 H100 GPUs free on 2 nodes plus 8 A100 GPUs: enough GPUs, not enough H100s. It waits.
    jobs.create(gpu_job("h", 3, resources=h100))
    cond = wait_admission(jobs, "h", "InsufficientGPU")
    assert f"nvidia.com/gpu.product={H100}" in cond["message"]
    assert "16 free across 2 node(s), room for 2 of 3 pod(s)" in cond["message"]
    # An A100 job is not held up behind it: its nodes are not the ones h waits for.
    jobs.create(gpu_job("a", 1, resources={"gpuProduct": A100}))
    (a_pod,) = jobs.wait_pods("a", all_running(1))
    assert a_pod.spec.node_name == a100_node

    for p in jobs.pods("blocker"):
        sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)
    pods = jobs.wait_pods("h", all_running(3))
    assert len({p.spec.node_name for p in pods}) == 3
    for p in pods:
        node = jobs.core.read_node(p.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100
        assert p.spec.node_selector["nvidia.com/gpu.product"] == H100
    # Never, at any moment, was a pod of an H100 job bound to the A100 node.
    assert not any(
        s.node == a100_node for snap in pod_watch.snapshots() for s in snap.values() if s.job in ("blocker", "h")
    )
