"""An unhealthy GPU on a rank's pod restarts the gang off that node (docs/health.md).

kwok runs the pods on the simulated H100 nodes; the test writes the device health into the pod's
status.containerStatuses[].allocatedResourcesStatus through the status subresource, as the kubelet
does when its device plugin reports a GPU unhealthy.
"""

from __future__ import annotations

from typing import Any

import pytest

from phalanx.core.names import LABEL_ATTEMPT
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import all_running, gpu_job

pytestmark = pytest.mark.usefixtures("operator")

DEVICE = "GPU-6f1c2b8e-0d4a-4c1e-9a57-3b2f9c1d7e42"


def report_device_health(jobs: JobClient, pod: Any, health: str) -> None:
    """What the kubelet writes for the trainer container's GPUs (the first one with `health`)."""
    status = pod.status.container_statuses[0]
    devices = [{"resourceID": DEVICE, "health": health}] + [
        {"resourceID": f"GPU-{i:08d}", "health": "Healthy"} for i in range(1, 8)
    ]
    patch = {
        "status": {
            "containerStatuses": [
                {
                    "name": status.name,
                    "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": devices}],
                }
            ]
        }
    }
    jobs.core.patch_namespaced_pod_status(pod.metadata.name, jobs.ns, patch)


def test_unhealthy_gpu_restarts_the_gang_on_other_nodes(jobs: JobClient) -> None:
    jobs.create(gpu_job("g", 2))
    first = jobs.wait_pods("g", all_running(2))
    victim = next(p for p in first if p.metadata.name == "g-worker-1")
    bad_node = victim.spec.node_name
    report_device_health(jobs, victim, "Unhealthy")
    stored = jobs.core.read_namespaced_pod_status(victim.metadata.name, jobs.ns)
    assert stored.status.container_statuses[0].allocated_resources_status, "the apiserver dropped the field"

    job = jobs.wait("g", lambda j: (j.get("status") or {}).get("attempt") == 2, 60, "the GPUUnhealthy restart")
    status = job["status"]
    restarting = next(c for c in status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "GPUUnhealthy", restarting
    named = f"device {DEVICE} (nvidia.com/gpu) of pod g-worker-1 on node {bad_node} is Unhealthy"
    assert named in restarting["message"], restarting
    assert status["avoidedNodes"] == [bad_node] and status["restarts"] == 1

    def second_gang_running(pods: list[Any]) -> bool:
        return all_running(2)(pods) and all(p.metadata.labels[LABEL_ATTEMPT] == "2" for p in pods)

    second = jobs.wait_pods("g", second_gang_running, timeout=90)
    assert bad_node not in {p.spec.node_name for p in second}
    for p in second:
        terms = p.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        assert [(f.key, f.operator, f.values) for t in terms for f in t.match_fields] == [
            ("metadata.name", "NotIn", [bad_node])
        ]
    assert jobs.wait_state("g", "Running")["status"]["avoidedNodes"] == [bad_node]
