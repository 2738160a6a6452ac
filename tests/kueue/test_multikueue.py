"""MultiKueue with real Kueue on two local control planes (dev/localcluster/multikueue.py).

The session's cluster is the manager; a second one, started here with its own Kueue, phalanx CRD and
phalanx operator (a process of its own), is the worker. A TrainingJob with spec.managedBy
kueue.x-k8s.io/multikueue is created on the manager: phalanx there makes only its Workload <job>-a1;
Kueue's MultiKueue (its generic adapter for external kinds) copies the job to the worker without
managedBy, phalanx on the worker runs it on the Workload MultiKueue copied there, and MultiKueue
copies the worker's status back to the manager's job. The pods are kwok's (simulated).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import localcluster
from localcluster import multikueue
from localcluster.sim import make_pod_fail, make_pod_succeed
from localcluster.testing import Kubectl, create_namespace, wait_for
from tests.kueue.queues import GROUP, VERSION, local_queue
from tests.plugins.operator import CRD, TEST_LEASE, JobClient, OperatorProcess
from tests.scheduling.conftest import gpu_job

pytestmark = pytest.mark.kueue
log = logging.getLogger("localcluster")
QUEUE = "multikueue"  # the ClusterQueue on both clusters (connect() makes them)
MULTIKUEUE = "kueue.x-k8s.io/multikueue"
TIMEOUT = 180  # two control planes and two Kueues on a shared machine
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multikueue-job.yaml"


@dataclass
class Worker:
    kubeconfig: Path
    api: client.ApiClient
    operator: OperatorProcess

    def jobs(self, namespace: str) -> JobClient:
        return JobClient(self.api, namespace)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, kubeconfig: Path, crd: Path) -> Iterator[Worker]:
    """A second control plane with Kueue and phalanx, connected to the session's cluster as its
    MultiKueue worker."""
    state = tmp_path_factory.mktemp("worker")
    try:
        info = localcluster.up("default", state, kueue=True, die_with_parent=True, log=log.info)
    except localcluster.ClusterError as e:
        pytest.fail(f"the worker's control plane did not start: {e}", pytrace=False)
    op: OperatorProcess | None = None
    try:
        Kubectl(info.kubeconfig).apply_crd(CRD)
        lease = {**TEST_LEASE, "PHALANX_LEASE_NAME": f"phalanx-worker-{uuid.uuid4().hex[:8]}"}
        op = OperatorProcess(info.kubeconfig, state / "operator.log", {**lease, "PHALANX_POD_NAME": "worker-op"})
        multikueue.connect(kubeconfig, info.kubeconfig, queue=QUEUE)
        api = config.new_client_from_config(config_file=str(info.kubeconfig))
        yield Worker(info.kubeconfig, api, op)
        api.close()
        multikueue.disconnect(kubeconfig, info.kubeconfig, queue=QUEUE)
    finally:
        if op is not None:
            op.stop()
            if os.environ.get("PHALANX_TEST_KEEP_LOGS"):
                log.info("worker operator log: %s", op.log_path)
        localcluster.down(state, log=log.info)


@pytest.fixture
def queues(api_client: client.ApiClient, worker: Worker, namespace: str) -> Iterator[None]:
    """The test's namespace on the worker too, and LocalQueue `team` on ClusterQueue QUEUE on both."""
    create_namespace(client.CoreV1Api(worker.api), namespace)
    local_queue(client.CustomObjectsApi(api_client), namespace, QUEUE)
    local_queue(client.CustomObjectsApi(worker.api), namespace, QUEUE)
    yield
    client.CustomObjectsApi(api_client).delete_collection_namespaced_custom_object(
        "phalanx.dev", "v1alpha1", namespace, "trainingjobs"
    )  # fmt: skip
    client.CoreV1Api(worker.api).delete_namespace(namespace)


def dispatched(name: str, **spec: Any) -> dict[str, Any]:
    """A 2 x 8-GPU job that Kueue's MultiKueue dispatches (the whole ClusterQueue's 16 GPUs)."""
    return gpu_job(name, replicas=2, managedBy=MULTIKUEUE, scheduling={"queueName": "team"}, **spec)


def workload(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "workloads", name
        )  # fmt: skip
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return body


def workload_names(api: client.ApiClient, namespace: str) -> set[str]:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")
    return {w["metadata"]["name"] for w in items["items"]}


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((body or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def running_on_worker(worker: Worker, namespace: str, name: str) -> list[client.V1Pod]:
    remote = worker.jobs(namespace)
    wait_for(lambda: _exists(remote, name), timeout=TIMEOUT, what=f"MultiKueue's copy of {name} on the worker")
    remote.wait_state(name, "Running", timeout=TIMEOUT)
    return remote.pods(name)


def _exists(jobs: JobClient, name: str) -> bool:
    try:
        jobs.get(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def test_a_job_created_on_the_manager_runs_on_the_worker_and_its_status_comes_back(
    operator: Any, jobs: JobClient, worker: Worker, namespace: str, queues: None
) -> None:
    (example,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert example["spec"]["managedBy"] == MULTIKUEUE
    example["metadata"]["name"] = "mk"
    jobs.create(example)
    pods = running_on_worker(worker, namespace, "mk")
    assert len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
    copy = worker.jobs(namespace).get("mk")
    assert "managedBy" not in copy["spec"]  # MultiKueue's adapter removes it, so the worker's phalanx runs it
    # Kueue 0.19 names the Workload it copied in an annotation (WorkloadIdentifierAnnotations, on by default).
    assert copy["metadata"]["annotations"]["kueue.x-k8s.io/prebuilt-workload-name"] == "mk-a1"
    assert copy["metadata"]["labels"]["kueue.x-k8s.io/multikueue-origin"]
    # The worker's phalanx used the Workload MultiKueue copied there; it made none of its own.
    assert workload_names(worker.api, namespace) == {"mk-a1"}

    here = jobs.wait_state("mk", "Running", timeout=TIMEOUT)  # the worker's status, copied by MultiKueue
    assert here["status"]["readySummary"] == "2/2"
    assert jobs.pods("mk") == []  # never a pod on the manager
    mine = workload(jobs.custom.api_client, namespace, "mk-a1")
    check = next(c for c in mine["status"]["admissionChecks"] if c["name"] == "worker")  # type: ignore[index]
    assert check["state"] == "Ready", check
    assert check["message"] == 'The workload was admitted on "worker"', check

    for p in pods:
        make_pod_succeed(client.CoreV1Api(worker.api), namespace, p.metadata.name)
    done = jobs.wait_state("mk", "Succeeded", timeout=TIMEOUT)
    assert done["status"]["attempt"] == 1
    assert jobs.pods("mk") == []
    finished = condition(workload(jobs.custom.api_client, namespace, "mk-a1"), "Finished")
    assert finished.get("status") == "True" and finished.get("reason") == "Succeeded", finished
    # Then MultiKueue removes the worker's copy and its Workload; the manager keeps the job and its status.
    wait_for(lambda: not _exists(worker.jobs(namespace), "mk"), timeout=TIMEOUT, what="the worker's copy removed")
    wait_for(lambda: not workload_names(worker.api, namespace), timeout=TIMEOUT, what="the worker's Workload removed")
    assert jobs.get("mk")["status"]["state"] == "Succeeded"


def test_a_gang_restart_on_the_worker_keeps_the_dispatched_workload(
    operator: Any, jobs: JobClient, worker: Worker, namespace: str, queues: None
) -> None:
    jobs.create(dispatched("again"))
    pods = running_on_worker(worker, namespace, "again")
    make_pod_fail(client.CoreV1Api(worker.api), namespace, pods[0].metadata.name, exit_code=137)

    def restarted(job: dict[str, Any]) -> bool:
        s = job.get("status") or {}
        return s.get("attempt") == 2 and s.get("state") == "Running"

    worker.jobs(namespace).wait(name="again", predicate=restarted, timeout=TIMEOUT, what="attempt 2 running")
    assert {p.metadata.name for p in worker.jobs(namespace).pods("again")} >= {
        "again-a2-worker-0", "again-a2-worker-1"
    }  # fmt: skip
    # Attempt 2 runs on the same Workload: the manager never saw its dispatched Workload go away.
    assert workload_names(worker.api, namespace) == {"again-a1"}
    here = jobs.wait(name="again", predicate=restarted, timeout=TIMEOUT, what="attempt 2 on the manager")
    assert here["status"]["restarts"] == 1
    mine = workload(jobs.custom.api_client, namespace, "again-a1")
    assert condition(mine, "Evicted").get("status") != "True", mine
    assert condition(mine, "Admitted").get("status") == "True", mine
    assert jobs.pods("again") == []

    for p in worker.jobs(namespace).pods("again"):
        if p.metadata.labels.get("phalanx.dev/attempt") == "2":
            make_pod_succeed(client.CoreV1Api(worker.api), namespace, p.metadata.name)
    jobs.wait_state("again", "Succeeded", timeout=TIMEOUT)


def test_a_failure_on_the_worker_fails_the_job_on_the_manager(
    operator: Any, jobs: JobClient, worker: Worker, namespace: str, queues: None
) -> None:
    jobs.create(dispatched("broken", runPolicy={"backoffLimit": 0}))
    pods = running_on_worker(worker, namespace, "broken")
    make_pod_fail(client.CoreV1Api(worker.api), namespace, pods[1].metadata.name, exit_code=1)
    there = worker.jobs(namespace).wait_state("broken", "Failed", timeout=TIMEOUT)
    here = jobs.wait_state("broken", "Failed", timeout=TIMEOUT)
    failed = next(c for c in here["status"]["conditions"] if c["type"] == "Failed")
    assert failed == next(c for c in there["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailed", failed
    assert f"pod {pods[1].metadata.name} exited with code 1 (Error)" in failed["message"], failed
    finished = condition(workload(jobs.custom.api_client, namespace, "broken-a1"), "Finished")
    assert finished.get("status") == "True" and finished.get("reason") == "Failed", finished


def test_without_a_local_queue_on_the_worker_the_job_waits_and_the_manager_shows_no_status(
    operator: Any, jobs: JobClient, api_client: client.ApiClient, worker: Worker, namespace: str
) -> None:
    create_namespace(client.CoreV1Api(worker.api), namespace)
    local_queue(client.CustomObjectsApi(api_client), namespace, QUEUE)  # on the manager only
    try:
        jobs.create(dispatched("stuck"))

        def copied() -> dict[str, Any] | None:
            wl = workload(worker.api, namespace, "stuck-a1")
            return wl if condition(wl, "QuotaReserved").get("message") else None

        remote = wait_for(copied, timeout=TIMEOUT, what="MultiKueue's Workload on the worker, with Kueue's verdict")
        reserved = condition(remote, "QuotaReserved")
        assert reserved["status"] == "False", reserved
        assert "LocalQueue team doesn't exist" in reserved["message"], reserved
        # The job itself is copied to the worker only once a worker reserves quota: nothing runs there,
        # and the manager's job has no status at all (phalanx writes none for MultiKueue's jobs).
        assert not _exists(worker.jobs(namespace), "stuck")
        assert not (jobs.get("stuck").get("status") or {})
        mine = workload(api_client, namespace, "stuck-a1")
        check = next(c for c in mine["status"]["admissionChecks"] if c["name"] == "worker")  # type: ignore[index]
        assert check["state"] == "Pending", check
    finally:
        client.CustomObjectsApi(api_client).delete_collection_namespaced_custom_object(
            "phalanx.dev", "v1alpha1", namespace, "trainingjobs"
        )  # fmt: skip
        client.CoreV1Api(worker.api).delete_namespace(namespace)


def test_a_missing_workload_priority_class_holds_the_job_on_the_manager_with_a_warning_event(
    operator: Any, jobs: JobClient, api_client: client.ApiClient, worker: Worker, namespace: str, queues: None
) -> None:
    # The status of a MultiKueue job is MultiKueue's, so phalanx says it in an Event, not in the status.
    body = dispatched("nameless")
    body["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": f"{namespace}-nonesuch"}
    jobs.create(body)

    def warned() -> str | None:
        for e in jobs.core.list_namespaced_event(namespace).items:
            if e.involved_object.name == "nameless" and e.reason == "WorkloadPriorityClassNotFound":
                return str(e.message)
        return None

    message = wait_for(warned, timeout=60, what="a WorkloadPriorityClassNotFound Event on the manager's job")
    assert f"WorkloadPriorityClass {namespace}-nonesuch (label kueue.x-k8s.io/priority-class) does not exist" in (
        message
    ), message
    assert workload_names(api_client, namespace) == set()
    assert not (jobs.get("nameless").get("status") or {})
    assert not _exists(worker.jobs(namespace), "nameless")


def test_a_dispatched_job_running_past_the_readiness_timeout_keeps_its_workload_on_the_manager(
    operator: Any, jobs: JobClient, worker: Worker, namespace: str, queues: None, ready_timeout: float
) -> None:
    """Kueue's waitForPodsReady runs on the manager too: the dispatched Workload there needs PodsReady=True
    (from phalanx, once MultiKueue has copied the worker's Running status) or Kueue evicts it."""
    jobs.create(dispatched("long"))
    running_on_worker(worker, namespace, "long")
    jobs.wait_state("long", "Running", timeout=TIMEOUT)
    mine = workload(jobs.custom.api_client, namespace, "long-a1")
    admitted = datetime.fromisoformat(condition(mine, "Admitted")["lastTransitionTime"].replace("Z", "+00:00"))
    time.sleep(max(admitted.timestamp() + ready_timeout + 10 - time.time(), 0))
    mine = workload(jobs.custom.api_client, namespace, "long-a1")
    assert condition(mine, "Evicted").get("status") != "True", condition(mine, "Evicted")
    assert condition(mine, "Admitted").get("status") == "True", mine
    assert condition(mine, "PodsReady").get("status") == "True", mine
    status = jobs.get("long")["status"]
    assert (status["state"], status["attempt"], status["restarts"]) == ("Running", 1, 0), status
