"""The TrainingJob lifecycle against the real control plane; pod outcomes come from kwok stages."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from localcluster import sim
from tests.plugins.operator import JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")


def attempts(pods: list[Any]) -> set[str]:
    return {p.metadata.labels["phalanx.dev/attempt"] for p in pods}


def running(n: int, attempt: int = 1) -> Any:
    def check(pods: list[Any]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(live) == n and all(
            p.status.phase == "Running" and p.metadata.labels["phalanx.dev/attempt"] == str(attempt) for p in live
        )

    return check


def test_create_runs_gang_and_succeeds(jobs: JobClient, namespace: str) -> None:
    jobs.create(job_manifest("happy", replicas=3))
    job = jobs.wait_state("happy", "Running")
    status = job["status"]
    assert status["worldSize"] == 3 and status["readySummary"] == "3/3" and status["attempt"] == 1
    pods = jobs.pods("happy")
    assert [p.metadata.name for p in pods] == ["happy-a1-worker-0", "happy-a1-worker-1", "happy-a1-worker-2"]
    svc = jobs.core.read_namespaced_service("happy", namespace)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses
    env = {e.name: e.value for e in pods[1].spec.containers[0].env}
    assert env["MASTER_ADDR"] == f"happy-worker-0.happy.{namespace}.svc"
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "3" and env["PHALANX_ATTEMPT"] == "1"
    assert pods[1].spec.hostname == "happy-worker-1" and pods[1].spec.subdomain == "happy"
    assert pods[0].metadata.owner_references[0].kind == "TrainingJob"
    for p in pods:
        sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)
    job = jobs.wait_state("happy", "Succeeded")
    assert job["status"]["completionTime"] and jobs.condition("happy", "Succeeded")["reason"] == "AllReplicasSucceeded"
    reasons = {e.reason for e in jobs.core.list_namespaced_event(namespace).items if e.involved_object.name == "happy"}
    assert {"CreatedPods", "GangAdmitted", "AllReplicasRunning", "AllReplicasSucceeded"} <= reasons


def test_retryable_failure_restarts_whole_gang(jobs: JobClient, namespace: str) -> None:
    jobs.create(job_manifest("oom", replicas=2))
    jobs.wait_pods("oom", running(2), what="attempt 1 running")
    sim.make_pod_fail(jobs.core, namespace, "oom-a1-worker-1", exit_code=137, reason="OOMKilled")
    pods = jobs.wait_pods("oom", running(2, attempt=2), what="attempt 2 running")
    assert attempts(pods) == {"2"}
    status = jobs.get("oom")["status"]
    assert status["restarts"] == 1 and status["attempt"] == 2
    env = {e.name: e.value for e in pods[0].spec.containers[0].env}
    assert env["PHALANX_ATTEMPT"] == "2"
    events = [e for e in jobs.core.list_namespaced_event(namespace).items if e.reason == "GangRestart"]
    assert events and "oom-a1-worker-1 exited with code 137" in events[0].message
    for p in pods:
        sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)
    jobs.wait_state("oom", "Succeeded")


def test_permanent_failure_fails_at_once_naming_pod(jobs: JobClient, namespace: str) -> None:
    jobs.create(job_manifest("bug", replicas=2))
    jobs.wait_pods("bug", running(2))
    sim.make_pod_fail(jobs.core, namespace, "bug-a1-worker-0", exit_code=1, reason="Error")
    job = jobs.wait_state("bug", "Failed")
    failed = jobs.condition("bug", "Failed")
    assert failed is not None and failed["reason"] == "PodFailed"
    assert "bug-a1-worker-0 exited with code 1" in failed["message"]
    assert job["status"]["restarts"] == 0
    # cleanPodPolicy Running (default): the rank still running is deleted, the failed one kept for its logs.
    pods = jobs.wait_pods(
        "bug", lambda ps: all(p.status.phase == "Failed" for p in ps if not p.metadata.deletion_timestamp)
    )
    assert any(p.metadata.name == "bug-a1-worker-0" for p in pods)


def test_backoff_limit_exhausted_fails(jobs: JobClient, namespace: str) -> None:
    jobs.create(job_manifest("flaky", replicas=2, runPolicy={"backoffLimit": 1}))
    jobs.wait_pods("flaky", running(2))
    sim.make_pod_fail(jobs.core, namespace, "flaky-a1-worker-0", exit_code=143, reason="Error")
    jobs.wait_pods("flaky", running(2, attempt=2))
    sim.make_pod_fail(jobs.core, namespace, "flaky-a2-worker-1", exit_code=139, reason="Error")
    jobs.wait_state("flaky", "Failed")
    failed = jobs.condition("flaky", "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    assert "flaky-a2-worker-1 exited with code 139" in failed["message"]
    assert jobs.get("flaky")["status"]["restarts"] == 1


def test_suspend_deletes_pods_and_resume_starts_new_attempt(jobs: JobClient) -> None:
    jobs.create(job_manifest("nap", replicas=2))
    jobs.wait_pods("nap", running(2))
    jobs.patch("nap", {"spec": {"runPolicy": {"suspend": True}}})
    jobs.wait_state("nap", "Suspended")
    jobs.wait_pods("nap", lambda ps: not ps, what="no pods while suspended")
    jobs.patch("nap", {"spec": {"runPolicy": {"suspend": False}}})
    pods = jobs.wait_pods("nap", running(2, attempt=2), what="attempt 2 after resume")
    assert attempts(pods) == {"2"}
    job = jobs.wait_state("nap", "Running")
    assert job["status"]["restarts"] == 0  # a resume is not a failure
    suspended = jobs.condition("nap", "Suspended")
    assert suspended is not None and suspended["status"] == "False" and suspended["reason"] == "Resumed"


def test_scale_restarts_gang_at_new_world_size(jobs: JobClient, kubectl: Any, namespace: str) -> None:
    jobs.create(job_manifest("grow", replicas=2, elastic={"minReplicas": 1, "maxReplicas": 4}))
    jobs.wait_pods("grow", running(2))
    kubectl("scale", "-n", namespace, "tj/grow", "--replicas=4")
    pods = jobs.wait_pods("grow", running(4, attempt=2), what="4 pods of attempt 2")
    env = {e.name: e.value for e in pods[3].spec.containers[0].env}
    assert env["WORLD_SIZE"] == "4" and env["RANK"] == "3"
    job = jobs.wait_state("grow", "Running")
    assert job["status"]["restarts"] == 0 and job["status"]["worldSize"] == 4
    scale = kubectl(
        "get", "-n", namespace, "--raw", f"/apis/phalanx.dev/v1alpha1/namespaces/{namespace}/trainingjobs/grow/scale"
    ).stdout
    assert '"replicas":4' in scale.replace(" ", "")
    # Outside the elastic bounds the apiserver refuses the scale.
    out = kubectl("scale", "-n", namespace, "tj/grow", "--replicas=5", check=False)
    assert out.returncode != 0 and "elastic" in out.stderr


def test_delete_cascades_to_pods_and_service(jobs: JobClient, namespace: str) -> None:
    jobs.create(job_manifest("gone", replicas=2))
    jobs.wait_pods("gone", running(2))
    jobs.delete("gone")
    jobs.wait_pods("gone", lambda ps: not ps, timeout=60, what="pods garbage-collected")
    with pytest.raises(ApiException) as err:
        jobs.core.read_namespaced_service("gone", namespace)
    assert err.value.status == 404


def test_invalid_spec_fails_job_and_others_are_unaffected(jobs: JobClient) -> None:
    long_name = "a" * 56  # fits the apiserver's 63, but <name>-worker-1 does not fit a DNS label
    jobs.create(job_manifest(long_name, replicas=2))
    jobs.create(job_manifest("fine", replicas=1))
    jobs.wait_state(long_name, "Failed")
    failed = jobs.condition(long_name, "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec" and "metadata.name" in failed["message"]
    assert jobs.pods(long_name) == []
    jobs.wait_state("fine", "Running")


def test_procs_per_pod_above_gpus_is_invalid_spec(jobs: JobClient) -> None:
    jobs.create(job_manifest("greedy", replicas=1, procsPerPod=4, resources={"gpus": 2}))
    jobs.wait_state("greedy", "Failed")
    failed = jobs.condition("greedy", "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec" and "spec.procsPerPod" in failed["message"]
