"""Pod Security: trainer pods pass `restricted` by default; a job loosens it only through its own pod
template, and only where the namespace's policy allows. The operator runs with the chart's
ServiceAccount only (chart_operator), as in production."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import wait_for
from tests.helm.release import denied_requests, new_namespace
from tests.plugins.operator import JobClient, OperatorProcess, job_manifest


def policy(level: str) -> dict[str, str]:
    return {
        "pod-security.kubernetes.io/enforce": level,
        "pod-security.kubernetes.io/enforce-version": "latest",
    }


@pytest.fixture
def namespace_at(core_v1: client.CoreV1Api, api_client: client.ApiClient) -> Iterator[Any]:
    made: list[str] = []

    def make(level: str) -> JobClient:
        ns = new_namespace(core_v1, f"pss-{level}", policy(level))
        made.append(ns)
        return JobClient(api_client, ns)

    yield make
    for ns in made:
        core_v1.delete_namespace(ns)


def loosened(name: str) -> dict[str, Any]:
    """A job whose image needs root and an extra capability, said in its own pod template."""
    job = job_manifest(name, replicas=1)
    spec = job["spec"]["template"]["spec"]
    spec["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    spec["containers"][0]["securityContext"] = {"capabilities": {"add": ["NET_BIND_SERVICE"]}}
    return job


def running(pods: list[Any], n: int) -> bool:
    return len(pods) == n and all(p.status.phase == "Running" for p in pods)


def test_job_runs_in_a_namespace_enforcing_restricted(chart_operator: OperatorProcess, namespace_at: Any) -> None:
    jobs: JobClient = namespace_at("restricted")
    jobs.create(job_manifest("locked", replicas=2, checkpoint={"uri": "s3://bucket/run"}))
    pods = jobs.wait_pods("locked", lambda ps: running(ps, 2), what="pods admitted under restricted")
    jobs.wait_state("locked", "Running")
    for pod in pods:
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        sc = pod.spec.containers[0].security_context
        assert sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
        shm = next(v for v in pod.spec.volumes if v.name == "dshm")
        assert shm.empty_dir.medium == "Memory"
    assert denied_requests(chart_operator.log_path) == []


def test_loosened_template_is_refused_in_a_restricted_namespace(
    chart_operator: OperatorProcess, namespace_at: Any
) -> None:
    jobs: JobClient = namespace_at("restricted")
    jobs.create(loosened("rooted"))
    # The apiserver's PodSecurity admission refuses the operator's pod create; the operator logs why ...
    refusal = 'violates PodSecurity "restricted:latest"'
    line = wait_for(
        lambda: next((x for x in chart_operator.log_path.read_text().splitlines() if refusal in x), None),
        timeout=60,
        what="the PodSecurity refusal in the operator log",
    )
    assert "runAsNonRoot != true" in line and "runAsUser=0" in line, line
    assert jobs.pods("rooted") == []
    # ... and the job's status says it too, with the chart's RBAC alone.
    refused = wait_for(lambda: jobs.condition("rooted", "ReplicaFailure"), timeout=30, what="ReplicaFailure")
    assert refused["reason"] == "PodSecurityViolation" and refusal in refused["message"]


def test_template_loosens_security_where_the_namespace_allows(
    chart_operator: OperatorProcess, namespace_at: Any
) -> None:
    jobs: JobClient = namespace_at("baseline")
    jobs.create(loosened("rooted"))
    (pod,) = jobs.wait_pods("rooted", lambda ps: running(ps, 1), what="the loosened pod admitted under baseline")
    # The template's values win over phalanx's restricted defaults; the defaults it did not touch stay.
    assert pod.spec.security_context.run_as_non_root is False and pod.spec.security_context.run_as_user == 0
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    sc = pod.spec.containers[0].security_context
    assert sc.capabilities.add == ["NET_BIND_SERVICE"] and sc.allow_privilege_escalation is False
    assert denied_requests(chart_operator.log_path) == []
