"""Preemption by real Kueue (core/kueue.py, core/reconcile.py `_evicted`), with simulated (kwok) pods.

A ClusterQueue of 16 GPUs that preempts lower priorities within itself. A 16-GPU job of a low
PriorityClass runs; a 16-GPU job of a higher one arrives. Kueue, not phalanx, decides: it marks the
low job's Workload Evicted (Preempted). phalanx then deletes that gang's pods gracefully, says in the
job's status who preempted it, starts the next attempt without counting a restart, and keeps the
evicted Workload's quota until the old pods are gone. When the high job ends, Kueue admits the low
job's new Workload and it runs again as attempt 2.

The real checkpoint (trainers saving on SIGTERM and resuming from that step) is not exercised here:
these pods are simulated. See docs/scheduling.md.

The priority comes either from a Kubernetes PriorityClass or from a Kueue WorkloadPriorityClass (the
job's kueue.x-k8s.io/priority-class label); the test runs once for each. A WorkloadPriorityClass that
does not exist keeps the job queued, saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import wait_for
from phalanx.core import kueue
from tests.kueue.queues import GROUP, H100, VERSION, drop_queue, make_queue
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import gpu_job, priority_classes  # noqa: F401  (a fixture)

pytestmark = pytest.mark.kueue


@pytest.fixture
def preempting_queue(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """LocalQueue `team` on a ClusterQueue of 16 GPUs (the H100 kwok nodes) that preempts lower priorities."""
    name = make_queue(client.CustomObjectsApi(api_client), namespace, f"pre-{namespace}", {"nvidia.com/gpu": "16"},
                      node_labels=H100, preemption={"withinClusterQueue": "LowerPriority"})  # fmt: skip
    yield name
    drop_queue(api_client, namespace, name)


@pytest.fixture
def workload_priority_classes(api_client: client.ApiClient) -> Iterator[Callable[[str, int], str]]:
    """Kueue WorkloadPriorityClasses (cluster-scoped), removed after the test."""
    custom = client.CustomObjectsApi(api_client)
    made: list[str] = []

    def make(name: str, value: int) -> str:
        custom.create_cluster_custom_object(GROUP, VERSION, "workloadpriorityclasses", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkloadPriorityClass", "metadata": {"name": name},
            "value": value,
        })  # fmt: skip
        made.append(name)
        return name

    yield make
    for name in made:
        custom.delete_cluster_custom_object(GROUP, VERSION, "workloadpriorityclasses", name)


@pytest.fixture(params=["PriorityClass", "WorkloadPriorityClass"])
def prioritised(
    request: pytest.FixtureRequest, priority_classes: Callable[[str, int], str],  # noqa: F811
    workload_priority_classes: Callable[[str, int], str], namespace: str,
) -> Callable[[str, int, dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """A GPU job on LocalQueue `team` whose Workload gets priority `value`: from a Kubernetes PriorityClass
    (spec.scheduling.priorityClassName) or from a Kueue WorkloadPriorityClass (the job's
    kueue.x-k8s.io/priority-class label, Kueue's way for its own jobs)."""

    def job(name: str, value: int, extra: dict[str, Any]) -> dict[str, Any]:
        klass = f"{namespace}-{name}"
        if request.param == "PriorityClass":
            body = gpu_job(name, replicas=2, scheduling={"queueName": "team", "priorityClassName": klass}, **extra)
            priority_classes(klass, value)
            return body
        body = gpu_job(name, replicas=2, scheduling={"queueName": "team"}, **extra)
        body["metadata"]["labels"] = {kueue.PRIORITY_CLASS_LABEL: workload_priority_classes(klass, value)}
        return body

    return job


def workloads(jobs: JobClient, namespace: str) -> dict[str, dict[str, Any]]:
    items = jobs.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
    return {w["metadata"]["name"]: w for w in items}


def test_higher_priority_job_preempts_and_the_preempted_one_resumes_as_a_new_attempt(
    operator: Any, jobs: JobClient, core_v1: client.CoreV1Api, namespace: str, preempting_queue: str,
    prioritised: Callable[[str, int, dict[str, Any]], dict[str, Any]],
) -> None:  # fmt: skip
    backoff = {"runPolicy": {"backoffLimit": 0}}  # a preemption counted as a restart would fail the job at once
    low = prioritised("low", 100, backoff)
    jobs.create(low)
    jobs.wait_state("low", "Running", timeout=120)
    spec = workloads(jobs, namespace)["low-a1"]["spec"]
    assert spec["priority"] == 100
    klass = spec["priorityClassRef"]
    assert klass["name"] == f"{namespace}-low" and klass["kind"] in ("PriorityClass", "WorkloadPriorityClass")

    created = jobs.create(prioritised("high", 1000, {}))
    jobs.wait_state("high", "Running", timeout=120)

    job = jobs.get("low")
    status = job["status"]
    assert (status["attempt"], status["restarts"]) == (2, 0), status
    restarting = jobs.condition("low", "Restarting") or {}
    assert (restarting.get("status"), restarting.get("reason")) == ("True", "Preempted"), restarting
    message = restarting["message"]
    assert f"for TrainingJob {namespace}/high" in message, message
    assert "Preempted to accommodate a workload" in message, message  # Kueue's own words
    assert created["metadata"]["uid"] in message, message
    assert "not counted against backoffLimit" in message, message
    # The preempted gang's pods are gone and its Workload with them (its quota went to the preemptor);
    # the next attempt's pods wait gated for Kueue in a Workload of their own.
    wait_for(lambda: "low-a1" not in workloads(jobs, namespace), timeout=60, what="low-a1 deleted")
    pods = jobs.pods("low")
    assert {p.metadata.name for p in pods} == {"low-a2-worker-0", "low-a2-worker-1"}
    assert all(p.spec.scheduling_gates for p in pods)
    assert (jobs.condition("low", "Admitted") or {}).get("status") == "False"

    # The preemptor ends: Kueue admits the low job's attempt-2 Workload and it runs.
    succeed = {"metadata": {"annotations": {"sim.phalanx.dev/outcome": "succeed"}}}
    for p in jobs.pods("high"):
        core_v1.patch_namespaced_pod(p.metadata.name, namespace, succeed)
    jobs.wait_state("high", "Succeeded", timeout=60)
    again = jobs.wait_state("low", "Running", timeout=120)
    assert (again["status"]["attempt"], again["status"]["restarts"]) == (2, 0)
    assert (jobs.condition("low", "Admitted") or {}).get("reason") == "AdmittedByKueue"
    assert (jobs.condition("low", "Restarting") or {}).get("status") == "False"


def test_a_missing_workload_priority_class_is_named_in_the_jobs_status(
    operator: Any, jobs: JobClient, namespace: str, preempting_queue: str
) -> None:
    body = gpu_job("orphan", replicas=1, scheduling={"queueName": "team"})
    body["metadata"]["labels"] = {kueue.PRIORITY_CLASS_LABEL: f"{namespace}-nonesuch"}
    jobs.create(body)

    def named() -> dict[str, Any] | None:
        c = jobs.condition("orphan", "Admitted") or {}
        return c if c.get("reason") == "WorkloadPriorityClassNotFound" else None

    admitted = wait_for(named, timeout=60, what="Admitted=False WorkloadPriorityClassNotFound")
    assert admitted["status"] == "False"
    assert (
        f"WorkloadPriorityClass {namespace}-nonesuch (label kueue.x-k8s.io/priority-class) does not exist"
        in (admitted["message"])
    ), admitted["message"]
    assert jobs.get("orphan")["status"]["state"] == "Queued"
    assert workloads(jobs, namespace) == {}
    assert all(p.spec.scheduling_gates for p in jobs.pods("orphan"))
