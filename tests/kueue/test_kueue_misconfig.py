"""Kueue misconfigurations reach the job's status in Kueue's own words (docs/scheduling.md): a queue name
with no LocalQueue, a ClusterQueue that does not cover nvidia.com/gpu, and a job larger than the quota.
Real Kueue decides each; the job stays Queued with its pods gated, none ever bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import wait_for
from tests.kueue.queues import drop_queue, make_queue
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import gpu_job

pytestmark = pytest.mark.kueue


@pytest.fixture
def cluster_queue(api_client: client.ApiClient, namespace: str) -> Iterator[Any]:
    """make(resource, quota): a ClusterQueue covering `resource` with `quota`, and LocalQueue `team` on it."""
    name = f"misconfig-{namespace}"

    def make(resource: str, quota: str) -> str:
        return make_queue(client.CustomObjectsApi(api_client), namespace, name, {resource: quota})

    yield make
    drop_queue(api_client, namespace, name)


def waits_saying(jobs: JobClient, name: str, *words: str) -> dict[str, Any]:
    """The job's Admitted=False condition once its message carries all `words`; its pods all gated."""

    def said() -> dict[str, Any] | None:
        c = jobs.condition(name, "Admitted") or {}
        return c if c.get("status") == "False" and all(w in c.get("message", "") for w in words) else None

    c: dict[str, Any] = wait_for(said, timeout=60, what=f"{name} waiting with {words}")
    job = jobs.get(name)
    assert job["status"]["state"] == "Queued", job["status"]
    pods = jobs.pods(name)
    assert pods and all(p.spec.scheduling_gates and not p.spec.node_name for p in pods), pods
    print(f"{name}: {c['reason']}: {c['message']}")
    return c


def test_a_queue_name_without_a_local_queue_is_named(operator: Any, jobs: JobClient) -> None:
    jobs.create(gpu_job("lost", replicas=1, scheduling={"queueName": "nowhere"}))
    waits_saying(jobs, "lost", "LocalQueue nowhere doesn't exist")


def test_a_cluster_queue_without_gpus_is_named(operator: Any, jobs: JobClient, cluster_queue: Any) -> None:
    cluster_queue("cpu", "64")
    jobs.create(gpu_job("nogpu", replicas=1, scheduling={"queueName": "team"}))
    waits_saying(jobs, "nogpu", "resource nvidia.com/gpu unavailable in ClusterQueue")


def test_a_job_larger_than_the_quota_is_named_with_the_numbers(
    operator: Any, jobs: JobClient, cluster_queue: Any
) -> None:
    flavor = cluster_queue("nvidia.com/gpu", "16")
    jobs.create(gpu_job("huge", replicas=3, scheduling={"queueName": "team"}))  # 3 x 8 = 24 GPUs
    waits_saying(
        jobs, "huge", f"insufficient quota for nvidia.com/gpu in flavor {flavor}", "(24) > maximum capacity (16)"
    )
