"""A complete job lifecycle with the operator holding only the chart ServiceAccount's permissions.

The operator runs as a subprocess whose kubeconfig carries a TokenRequest token of the chart's
ServiceAccount, against the local apiserver with RBAC enforced: every call it makes (kopf's watches,
pod creation, ungating, status patches, events, TTL deletion, claims) must be allowed by the chart's
(Cluster)Role alone. After each scenario its log must show no refused request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import sim
from localcluster.testing import Kubectl
from tests.helm.release import SERVICE_ACCOUNT, denied_requests, installed, new_namespace, service_account_kubeconfig
from tests.plugins.operator import JobClient, OperatorProcess, job_manifest

STATIC_CLASS = "phalanx-rbac-static"


def running(n: int, attempt: int) -> Callable[[list[Any]], bool]:
    def check(pods: list[Any]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(live) == n and all(
            p.status.phase == "Running" and p.metadata.labels["phalanx.dev/attempt"] == str(attempt) for p in live
        )

    return check


def gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def test_lifecycle_create_restart_scale_suspend_delete(
    chart_operator: OperatorProcess, jobs: JobClient, namespace: str, kubectl: Kubectl
) -> None:
    jobs.create(job_manifest("life", replicas=2, elastic={"minReplicas": 1, "maxReplicas": 3}))
    jobs.wait_pods("life", running(2, attempt=1), what="attempt 1 running")
    job = jobs.wait_state("life", "Running")
    assert job["status"]["worldSize"] == 2

    # Gang restart: one rank OOM-killed (exit 137) restarts the whole gang as attempt 2.
    sim.make_pod_fail(jobs.core, namespace, "life-a1-worker-1", exit_code=137, reason="OOMKilled")
    jobs.wait_pods("life", lambda ps: any(running(2, attempt=a)(ps) for a in (2, 3, 4)), what="a new attempt")
    status = jobs.get("life")["status"]
    assert status["restarts"] == 1 and status["attempt"] == 2, status  # one failure, one gang restart

    # kubectl scale (the /scale subresource): a new attempt at the new world size.
    kubectl("scale", "-n", namespace, "tj/life", "--replicas=3")
    pods = jobs.wait_pods("life", running(3, attempt=3), what="3 pods of attempt 3")
    assert {e.name: e.value for e in pods[2].spec.containers[0].env}["WORLD_SIZE"] == "3"

    # Suspend deletes the pods; resume starts a new attempt.
    jobs.patch("life", {"spec": {"runPolicy": {"suspend": True}}})
    jobs.wait_state("life", "Suspended")
    jobs.wait_pods("life", lambda ps: not ps, what="no pods while suspended")
    jobs.patch("life", {"spec": {"runPolicy": {"suspend": False}}})
    jobs.wait_pods("life", running(3, attempt=4), what="attempt 4 after resume")
    jobs.wait_state("life", "Running")

    # The operator's events were accepted (events: create).
    reasons = {e.reason for e in jobs.core.list_namespaced_event(namespace).items if e.involved_object.name == "life"}
    assert {"CreatedPods", "GangRestart"} <= reasons

    # Delete cascades: the garbage collector follows the ownerReferences the operator set.
    jobs.delete("life")
    jobs.wait_pods("life", lambda ps: not ps, what="pods garbage-collected")
    jobs.wait_pods(
        "life",
        lambda _: gone(lambda: jobs.core.read_namespaced_service("life", namespace)),
        what="service garbage-collected",
    )
    assert denied_requests(chart_operator.log_path) == []


def test_native_gang_with_the_charts_rbac_only(
    chart_operator: OperatorProcess, jobs: JobClient, namespace: str, api_client: client.ApiClient
) -> None:
    """gangBackend PodGroup: the Workload and PodGroup per attempt are listed, created and deleted with the
    chart's scheduling.k8s.io rules (list, create, delete) and nothing more."""
    custom = client.CustomObjectsApi(api_client)

    def groups() -> list[str]:
        found = custom.list_namespaced_custom_object(
            "scheduling.k8s.io", "v1alpha2", namespace, "podgroups", label_selector="phalanx.dev/job-name=native"
        )
        return sorted(o["metadata"]["name"] for o in found["items"])

    jobs.create(job_manifest("native", replicas=2, scheduling={"gangBackend": "PodGroup"}))
    jobs.wait_pods("native", running(2, attempt=1), what="attempt 1 running")
    assert groups() == ["native-a1"]
    sim.make_pod_fail(jobs.core, namespace, "native-a1-worker-1", exit_code=137, reason="OOMKilled")
    pods = jobs.wait_pods("native", running(2, attempt=2), what="attempt 2 running")
    jobs.wait_pods("native", lambda _: groups() == ["native-a2"], what="attempt 1's PodGroup deleted")
    for p in pods:
        sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)
    jobs.wait_state("native", "Succeeded")
    jobs.wait_pods("native", lambda _: groups() == [], what="the finished job's PodGroup deleted")
    assert denied_requests(chart_operator.log_path) == []


def test_ttl_deletes_finished_job(chart_operator: OperatorProcess, jobs: JobClient, namespace: str) -> None:
    """ttlSecondsAfterFinished: the operator deletes the job itself (trainingjobs: delete)."""
    jobs.create(job_manifest("brief", replicas=1, runPolicy={"ttlSecondsAfterFinished": 0}))
    (pod,) = jobs.wait_pods("brief", running(1, attempt=1))
    sim.make_pod_succeed(jobs.core, namespace, pod.metadata.name)
    jobs.wait_pods("brief", lambda _: gone(lambda: jobs.get("brief")), what="job deleted by its TTL")
    assert denied_requests(chart_operator.log_path) == []


@pytest.fixture
def static_pv(core_v1: client.CoreV1Api) -> Iterator[str]:
    """A PersistentVolume for one claim (there is no provisioner in the local cluster)."""
    name = f"pv-rbac-{uuid.uuid4().hex[:8]}"
    core_v1.create_persistent_volume(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "2Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": STATIC_CLASS,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/phalanx-pv/{name}"},
            },
        }
    )
    yield name
    core_v1.delete_persistent_volume(name)


def test_checkpoint_claim_and_object_store_secret_without_secret_access(
    chart_operator: OperatorProcess, jobs: JobClient, namespace: str, static_pv: str
) -> None:
    """The operator provisions a claim (persistentvolumeclaims: list, watch, create), and passes an
    object-store Secret to pods by reference only: it has no access to Secrets at all."""
    storage = {"storage": {"size": "1Gi", "storageClassName": STATIC_CLASS}, "retainPolicy": "Delete"}
    jobs.create(job_manifest("ckpt", replicas=2, checkpoint=storage))
    jobs.wait_pods("ckpt", running(2, attempt=1), timeout=90, what="pods with the provisioned claim")
    pvc = jobs.core.read_namespaced_persistent_volume_claim("ckpt-checkpoints", namespace)
    assert pvc.metadata.owner_references[0].kind == "TrainingJob"

    secret_ref = {"name": "s3-creds", "keys": {"AWS_SECRET_ACCESS_KEY": "secret"}}
    jobs.create(job_manifest("s3", replicas=1, checkpoint={"uri": "s3://bucket/run", "secretRef": secret_ref}))
    (pod,) = jobs.wait_pods("s3", running(1, attempt=1))
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-creds"
    assert denied_requests(chart_operator.log_path) == []


def test_namespace_scoped_install_runs_jobs_in_its_namespace_only(
    kubeconfig: Path,
    core_v1: client.CoreV1Api,
    operator_process: Callable[..., OperatorProcess],
    jobs: JobClient,
    namespace: str,
    tmp_path: Path,
    api_client: client.ApiClient,
) -> None:
    """scope=namespace: a Role in the watched namespace (plus read-only nodes, PriorityClasses, CRDs and
    namespaces) is enough for the lifecycle there, and the operator cannot touch other namespaces."""
    values = {"scope": "namespace", "watchNamespace": namespace}
    with installed(kubeconfig, core_v1, "rbac-ns-chart", values=values) as (_, release_ns):
        as_operator = service_account_kubeconfig(kubeconfig, core_v1, release_ns, SERVICE_ACCOUNT, tmp_path / "sa")
        lease = {"PHALANX_LEASE_NAMESPACE": release_ns}  # the chart grants Leases in its own namespace only
        op = operator_process(env={"PHALANX_WATCH_NAMESPACE": namespace, **lease}, kubeconfig_path=as_operator)
        elsewhere = JobClient(api_client, new_namespace(core_v1, "rbac-elsewhere"))
        try:
            elsewhere.create(job_manifest("ignored", replicas=1))
            jobs.create(job_manifest("local", replicas=2))
            jobs.wait_pods("local", running(2, attempt=1))
            jobs.wait_state("local", "Running")
            sim.make_pod_fail(jobs.core, namespace, "local-a1-worker-0", exit_code=137, reason="OOMKilled")
            jobs.wait_pods("local", running(2, attempt=2), what="gang restart")
            jobs.delete("local")
            jobs.wait_pods("local", lambda ps: not ps, what="pods garbage-collected")
            # The job outside the watched namespace was never touched: no status, no pods.
            assert "status" not in elsewhere.get("ignored") and elsewhere.pods("ignored") == []
            assert denied_requests(op.log_path) == []
        finally:
            core_v1.delete_namespace(elsewhere.ns)


@pytest.mark.kueue
def test_kueue_admission_with_a_workload_priority_class_under_the_charts_permissions(
    chart_operator: OperatorProcess, jobs: JobClient, namespace: str, api_client: client.ApiClient
) -> None:
    """A job queued by real Kueue with a WorkloadPriorityClass: the Workload is created (workloads: create)
    with the class's value (workloadpriorityclasses: get), admitted on a flavor (resourceflavors: get),
    reported ready (workloads/status: patch) and deleted when the job ends (workloads: delete)."""
    from tests.kueue.queues import GROUP, VERSION, delete_cluster_queue, local_queue

    custom = client.CustomObjectsApi(api_client)
    name = f"rbac-{namespace}"
    custom.create_cluster_custom_object(GROUP, VERSION, "resourceflavors", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": name},
    })  # fmt: skip
    custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"namespaceSelector": {}, "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
            {"name": name, "resources": [{"name": "cpu", "nominalQuota": "8"}]}]}]},
    })  # fmt: skip
    custom.create_cluster_custom_object(GROUP, VERSION, "workloadpriorityclasses", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": 42,
    })  # fmt: skip
    try:
        local_queue(custom, namespace, name)
        body = job_manifest("queued", replicas=1, scheduling={"queueName": "team"})
        body["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": name}
        body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
        jobs.create(body)
        jobs.wait_state("queued", "Running", timeout=120)
        wl = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", "queued-a1")
        assert wl["spec"]["priority"] == 42 and wl["spec"]["priorityClassRef"]["kind"] == "WorkloadPriorityClass"

        def reported_ready() -> bool:
            got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", "queued-a1")
            return any(c["type"] == "PodsReady" and c["status"] == "True" for c in got["status"]["conditions"])

        jobs.wait_pods("queued", lambda _: reported_ready(), what="PodsReady=True on the Workload")
        sim.make_pod_succeed(jobs.core, namespace, "queued-a1-worker-0")
        jobs.wait_state("queued", "Succeeded")

        def read() -> Any:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", "queued-a1")

        jobs.wait_pods("queued", lambda _: gone(read), what="the finished job's Workload deleted")
        assert denied_requests(chart_operator.log_path) == []
    finally:
        custom.delete_collection_namespaced_custom_object("phalanx.dev", "v1alpha1", namespace, "trainingjobs")
        custom.delete_cluster_custom_object(GROUP, VERSION, "workloadpriorityclasses", name)
        delete_cluster_queue(custom, name)
