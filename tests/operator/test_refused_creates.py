"""What the apiserver refuses reaches the job's status: refused pod creates (Pod Security, quota) as
condition ReplicaFailure with the apiserver's message, retried with backoff and ended by the startup
deadline; reconciles that keep failing as condition ReconcileError. Real control plane, real admission."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster import sim
from localcluster.testing import wait_for
from tests.plugins.operator import JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")

LABEL = "phalanx.dev/job-name"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def has(type_: str, status: str = "True", reason: str | None = None) -> Any:
    def check(job: dict[str, Any]) -> bool:
        c = condition(job, type_)
        return c is not None and c["status"] == status and (reason is None or c["reason"] == reason)

    return check


def restrict(core_v1: client.CoreV1Api, namespace: str) -> None:
    core_v1.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})


def rooted(name: str, **spec: Any) -> dict[str, Any]:
    """A job whose template asks for root: Pod Security restricted refuses its pods."""
    job = job_manifest(name, replicas=2, **spec)
    job["spec"]["template"]["spec"]["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    return job


def test_pod_security_refusal_is_in_status_and_the_startup_deadline_ends_it(
    jobs: JobClient, core_v1: client.CoreV1Api, namespace: str
) -> None:
    restrict(core_v1, namespace)
    jobs.create(rooted("rooted", runPolicy={"startupDeadlineSeconds": 8}))
    job = jobs.wait("rooted", has("ReplicaFailure", reason="PodSecurityViolation"), what="ReplicaFailure")
    refused = condition(job, "ReplicaFailure")
    assert refused is not None and 'violates PodSecurity "restricted:latest"' in refused["message"]
    assert "runAsUser=0" in refused["message"] and "rooted-a1-worker-" in refused["message"]
    admitted = condition(job, "Admitted")
    assert admitted is not None and admitted["reason"] == "PodSecurityViolation"
    assert job["status"]["state"] == "Queued" and jobs.pods("rooted") == []
    job = jobs.wait_state("rooted", "Failed", timeout=40)
    failed = condition(job, "Failed")
    assert failed is not None and failed["reason"] == "PodSecurityViolation"
    assert "startupDeadlineSeconds=8" in failed["message"] and "violates PodSecurity" in failed["message"]
    events = [e for e in jobs.core.list_namespaced_event(namespace).items if e.involved_object.name == "rooted"]
    assert any(e.reason == "PodSecurityViolation" and e.type == "Warning" for e in events)


def test_sidecar_and_init_container_pass_restricted_with_the_trainers_defaults(
    jobs: JobClient, core_v1: client.CoreV1Api, namespace: str
) -> None:
    restrict(core_v1, namespace)
    job = job_manifest("sidecars", replicas=2)
    pod_spec = job["spec"]["template"]["spec"]
    pod_spec["containers"].append({"name": "logs", "image": "fluent-bit:test"})
    pod_spec["initContainers"] = [{"name": "fetch", "image": "busybox:test", "command": ["true"]}]
    jobs.create(job)
    jobs.wait_state("sidecars", "Running", timeout=60)
    for pod in jobs.pods("sidecars"):
        for c in [*pod.spec.init_containers, *pod.spec.containers]:
            assert c.security_context.allow_privilege_escalation is False, c.name
            assert c.security_context.capabilities.drop == ["ALL"], c.name
    assert condition(jobs.get("sidecars"), "ReplicaFailure") is None


def test_quota_refusal_backs_off_and_clears_once_the_quota_allows(
    jobs: JobClient, core_v1: client.CoreV1Api, namespace: str
) -> None:
    quota = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="pods"), spec={"hard": {"pods": "1"}})
    core_v1.create_namespaced_resource_quota(namespace, quota)
    # Until the quota controller has computed its usage, admission refuses creates for another reason.
    wait_for(lambda: core_v1.read_namespaced_resource_quota("pods", namespace).status.hard or None, what="quota")
    jobs.create(job_manifest("capped", replicas=2))
    job = jobs.wait("capped", has("ReplicaFailure", reason="QuotaExceeded"), what="QuotaExceeded")
    message = condition(job, "ReplicaFailure")["message"]  # type: ignore[index]
    assert "exceeded quota: pods" in message and "capped-a1-worker-" in message
    assert len(jobs.pods("capped")) == 1  # one fits the quota; the gang waits for the other
    core_v1.delete_namespaced_resource_quota("pods", namespace)
    jobs.wait_pods("capped", lambda ps: len(ps) == 2, timeout=60, what="the second pod after the quota went")
    job = jobs.wait("capped", has("ReplicaFailure", status="False", reason="PodsCreated"), what="cleared")
    jobs.wait_state("capped", "Running")


@pytest.fixture
def deny_pod_deletes(api_client: client.ApiClient, namespace: str) -> Iterator[Any]:
    """A ValidatingAdmissionPolicy refusing deletes of one job's pods in this namespace; removed by lift()."""
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"deny-deletes-{namespace}"

    def lift() -> None:
        for delete in (
            admission.delete_validating_admission_policy_binding,
            admission.delete_validating_admission_policy,
        ):
            try:
                delete(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise

    def install(job: str) -> None:
        labels = "oldObject.metadata.labels"
        frozen = f"!has({labels}) || {labels}.all(k, k != '{LABEL}' || {labels}[k] != '{job}')"
        admission.create_validating_admission_policy(
            {
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["pods"]}
                        ]
                    },
                    "validations": [
                        {
                            "expression": frozen,
                            "message": f"deletes of {job}'s pods are frozen by the test",
                        }
                    ],
                },
            }
        )
        admission.create_validating_admission_policy_binding(
            {
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                    },
                },
            }
        )

    yield install, lift
    lift()


def test_failing_reconciles_set_reconcile_error_until_they_succeed(
    jobs: JobClient, namespace: str, deny_pod_deletes: Any
) -> None:
    install, lift = deny_pod_deletes
    jobs.create(job_manifest("stuck", replicas=2))
    jobs.wait_state("stuck", "Running")
    install("stuck")

    def in_force() -> bool | None:
        try:
            jobs.core.delete_namespaced_pod("stuck-a1-worker-0", namespace, dry_run="All")
        except client.ApiException as exc:
            return exc.status == 422 or None
        return None

    wait_for(in_force, timeout=30, what="the admission policy in force")  # policies take a moment to load
    # A retryable failure restarts the gang, which needs attempt 1's pods deleted: the apiserver refuses.
    sim.make_pod_fail(jobs.core, namespace, "stuck-a1-worker-1", exit_code=137, reason="OOMKilled")
    job = jobs.wait("stuck", has("ReconcileError", reason="ReconcileFailed"), timeout=60, what="ReconcileError")
    error = condition(job, "ReconcileError")
    assert error is not None and "frozen by the test" in error["message"] and "backoff" in error["message"]
    assert job["status"]["attempt"] == 2  # the new attempt is recorded; its pods wait for the old ones to go
    lift()
    jobs.wait("stuck", has("ReconcileError", status="False", reason="Reconciled"), timeout=120, what="cleared")
    jobs.wait_state("stuck", "Running", timeout=60)
    assert {p.metadata.labels["phalanx.dev/attempt"] for p in jobs.pods("stuck")} == {"2"}
