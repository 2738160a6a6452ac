"""Native gang scheduling (spec.scheduling.gangBackend PodGroup) against the real kube-scheduler of Kubernetes
1.36 with GenericWorkload and GangScheduling on (the default profile: 4 H100 nodes x 8 GPUs, kwok).

phalanx makes a Workload and a PodGroup per attempt and creates the pods ungated, each naming the PodGroup;
the kube-scheduler's GangScheduling plugin binds them all or none. These tests watch every pod event, so
they assert what never happened (a pod bound while its gang cannot fit, two gangs holding nodes at once),
not only the end state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

import localcluster
from localcluster import sim
from localcluster.testing import Kubectl, create_namespace, unique_namespace_name, wait_for
from tests.plugins.operator import CRD, JobClient, OperatorProcess, job_manifest
from tests.scheduling.conftest import PodWatch, all_running, gpu_job

pytestmark = pytest.mark.usefixtures("operator")

GROUP, VERSION = "scheduling.k8s.io", "v1alpha2"
NATIVE = {"gangBackend": "PodGroup"}


def native_job(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return gpu_job(name, replicas, scheduling={**NATIVE, **spec.pop("scheduling", {})}, **spec)


def objects(api_client: client.ApiClient, namespace: str, plural: str, job: str) -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(api_client)
    found = custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, label_selector=f"phalanx.dev/job-name={job}"
    )
    return sorted(found["items"], key=lambda o: o["metadata"]["name"])


def names(items: list[dict[str, Any]], live_only: bool = True) -> list[str]:
    return [o["metadata"]["name"] for o in items if not (live_only and o["metadata"].get("deletionTimestamp"))]


def raw_pod(core_v1: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the apiserver returns it: the client's models predate spec.schedulingGroup."""
    resp = core_v1.read_namespaced_pod(name, namespace, _preload_content=False)
    result: dict[str, Any] = json.loads(resp.data)
    return result


def admitted(jobs: JobClient, name: str) -> dict[str, Any] | None:
    return jobs.condition(name, "Admitted")


def bound(watch: PodWatch, job: str) -> Iterator[int]:
    """For every recorded moment: how many live pods of `job` were bound to a node."""
    for snap in watch.snapshots():
        yield sum(1 for s in snap.values() if s.job == job and s.node and s.phase not in ("Succeeded", "Failed"))


def test_one_pod_group_per_attempt_and_a_gang_restart_replaces_it(
    jobs: JobClient, namespace: str, api_client: client.ApiClient, core_v1: client.CoreV1Api
) -> None:
    jobs.create(native_job("ng", 2))
    pods = jobs.wait_pods("ng", all_running(2))
    (group,) = objects(api_client, namespace, "podgroups", "ng")
    (workload,) = objects(api_client, namespace, "workloads", "ng")
    assert group["metadata"]["name"] == workload["metadata"]["name"] == "ng-a1"
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 2}}
    assert group["spec"]["podGroupTemplateRef"]["workload"]["workloadName"] == "ng-a1"
    assert workload["spec"]["podGroupTemplates"][0]["schedulingPolicy"] == {"gang": {"minCount": 2}}
    for obj in (group, workload):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("TrainingJob", "ng")
    for p in pods:
        spec = raw_pod(core_v1, namespace, p.metadata.name)["spec"]
        assert spec["schedulingGroup"] == {"podGroupName": "ng-a1"}
        assert not spec.get("schedulingGates")  # no gate of phalanx's: the kube-scheduler placed them
    c = jobs.wait(
        "ng", lambda j: (admitted(jobs, "ng") or {}).get("reason") == "AdmittedByPodGroup", what="AdmittedByPodGroup"
    )
    assert next(x for x in c["status"]["conditions"] if x["type"] == "Admitted")["status"] == "True"

    # A rank fails with a retryable exit: the gang restarts as attempt 2 with a PodGroup of its own.
    sim.make_pod_fail(core_v1, namespace, pods[1].metadata.name, exit_code=137, reason="OOMKilled")
    jobs.wait("ng", lambda j: (j.get("status") or {}).get("attempt") == 2, what="attempt 2")
    second = jobs.wait_pods(
        "ng",
        lambda ps: (
            len(ps) == 2
            and all(p.metadata.labels["phalanx.dev/attempt"] == "2" and p.status.phase == "Running" for p in ps)
        ),
        what="attempt 2 running",
    )
    for p in second:
        assert raw_pod(core_v1, namespace, p.metadata.name)["spec"]["schedulingGroup"] == {"podGroupName": "ng-a2"}
    wait_for(
        lambda: (
            names(objects(api_client, namespace, "podgroups", "ng"), live_only=False) == ["ng-a2"]
            and names(objects(api_client, namespace, "workloads", "ng"), live_only=False) == ["ng-a2"]
        ),
        timeout=60,
        what="attempt 1's PodGroup and Workload deleted, attempt 2's in place",
    )


def test_a_gang_larger_than_free_capacity_binds_no_pod_until_it_fits(
    jobs: JobClient, namespace: str, api_client: client.ApiClient, pod_watch: PodWatch
) -> None:
    """5 x 8 GPUs on 32: plain pods would bind 4 and leave one Unschedulable; the PodGroup binds none."""
    jobs.create(native_job("big", 5))
    jobs.wait_pods("big", lambda ps: len(ps) == 5, what="all 5 pods created (ungated)")

    def held_back() -> bool:
        groups = objects(api_client, namespace, "podgroups", "big")
        conds = [c for g in groups for c in (g.get("status") or {}).get("conditions") or []]
        return any(c["type"] == "PodGroupScheduled" and c["status"] == "False" for c in conds)

    wait_for(held_back, timeout=90, what="the kube-scheduler to find PodGroup big-a1 unschedulable")
    # The job's status carries the scheduler's verdict (polled by the operator).
    job = jobs.wait(
        "big",
        lambda j: (
            (admitted(jobs, "big") or {}).get("reason") not in (None, "WaitingForPodGroup", "WaitingForScheduler")
        ),
        what="the scheduler's verdict in Admitted",
    )
    c = next(x for x in job["status"]["conditions"] if x["type"] == "Admitted")
    assert c["status"] == "False" and "big-a1" in c["message"] and job["status"]["state"] == "Queued"
    assert max(bound(pod_watch, "big")) == 0, "a pod of a gang that cannot fit was bound"

    # Four fit: the rescale is attempt 2, and its gang binds whole.
    jobs.patch("big", {"spec": {"replicas": 4}})
    jobs.wait_pods(
        "big",
        lambda ps: (
            len(ps) == 4
            and all(p.metadata.labels["phalanx.dev/attempt"] == "2" and p.status.phase == "Running" for p in ps)
        ),
        timeout=90,
        what="attempt 2's 4 pods running",
    )


def test_two_competing_gangs_never_half_place(
    jobs: JobClient, namespace: str, core_v1: client.CoreV1Api, pod_watch: PodWatch
) -> None:
    """Two 3 x 8-GPU gangs on 32 GPUs: one runs whole, the other binds nothing (though 8 GPUs stay free,
    room for one of its pods) until room for all three is free; then it runs whole."""
    jobs.create(native_job("a", 3))
    jobs.create(native_job("b", 3))
    wait_for(lambda: any(all_running(3)(jobs.pods(n)) for n in ("a", "b")), timeout=90, what="one gang running whole")
    winner = next(n for n in ("a", "b") if all_running(3)(jobs.pods(n)))
    loser = "b" if winner == "a" else "a"
    jobs.wait_pods(loser, lambda ps: len(ps) == 3, what=f"{loser}'s 3 pods created")
    wait_for(
        lambda: all(any(c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions or [])
                    for p in jobs.pods(loser)),
        timeout=90, what=f"the scheduler to hold back all of {loser}'s pods",
    )  # fmt: skip
    # Checked repeatedly: while the winner runs, the loser holds no node.
    for _ in range(10):
        assert not [p.metadata.name for p in jobs.pods(loser) if p.spec.node_name], f"{loser} half placed"
        time.sleep(0.5)
    for p in jobs.pods(winner):
        sim.make_pod_succeed(core_v1, namespace, p.metadata.name)
    jobs.wait_pods(loser, all_running(3), timeout=120, what=f"{loser} running whole after {winner} ended")
    # Every recorded moment: a pod of the loser is bound only when the winner has at most one pod left on
    # the 4 nodes, i.e. when all three of the loser's fit. Plain pods would take the free node at once.
    for snap in pod_watch.snapshots():
        live = [s for s in snap.values() if s.node and s.phase not in ("Succeeded", "Failed")]
        held = {job: sum(1 for s in live if s.job == job) for job in (winner, loser)}
        assert held[loser] == 0 or held[winner] <= 1, f"{loser} bound beside {held[winner]} pods of {winner}: {snap}"


def test_default_jobs_still_use_phalanx_gates(
    jobs: JobClient, namespace: str, api_client: client.ApiClient, core_v1: client.CoreV1Api
) -> None:
    jobs.create(gpu_job("plain", 2))
    pods = jobs.wait_pods("plain", all_running(2))
    c = admitted(jobs, "plain")
    assert c is not None and (c["status"], c["reason"]) == ("True", "GangAdmitted")
    for p in pods:
        assert "schedulingGroup" not in raw_pod(core_v1, namespace, p.metadata.name)["spec"]
    assert objects(api_client, namespace, "podgroups", "plain") == []
    assert objects(api_client, namespace, "workloads", "plain") == []


def test_on_a_control_plane_without_the_gates_the_job_waits_with_the_apiservers_answer(
    tmp_path: Path, operator_process: Callable[..., OperatorProcess]
) -> None:
    """A second, stock 1.36 control plane (profile stock: no alpha gates, v1alpha2 not served) with the
    operator as a process against it: the job stays Queued with PodGroupAPIUnavailable, no pod, no error."""
    info = localcluster.up("stock", tmp_path / "stock", die_with_parent=True, log=lambda _: None)
    api = config.new_client_from_config(config_file=str(info.kubeconfig))
    try:
        stock = Kubectl(info.kubeconfig)
        assert "podgroups" not in stock("api-resources", "--api-group=scheduling.k8s.io", "-o", "name").stdout
        stock.apply_crd(CRD)
        core = client.CoreV1Api(api)
        ns = create_namespace(core, unique_namespace_name("nogates"))
        operator_process(kubeconfig_path=info.kubeconfig)
        jobs = JobClient(api, ns)
        jobs.create(job_manifest("nogates", replicas=2, scheduling=NATIVE))
        job = jobs.wait(
            "nogates",
            lambda j: (jobs.condition("nogates", "Admitted") or {}).get("reason") == "PodGroupAPIUnavailable",
            timeout=90,
            what="PodGroupAPIUnavailable",
        )
        c = next(x for x in job["status"]["conditions"] if x["type"] == "Admitted")
        assert c["status"] == "False" and "scheduling.k8s.io/v1alpha2" in c["message"]
        assert "the server could not find the requested resource" in c["message"]  # the apiserver's words
        assert job["status"]["state"] == "Queued" and jobs.pods("nogates") == []
        assert not any(x["type"] in ("Failed", "ReconcileError") and x["status"] == "True"
                       for x in job["status"]["conditions"])  # fmt: skip
    finally:
        api.close()
        localcluster.down(tmp_path / "stock", log=lambda _: None)


def test_without_the_api_the_job_waits_and_starts_once_it_answers(
    jobs: JobClient, operator: Any, api_client: client.ApiClient
) -> None:
    """The session's apiserver asked for a version it does not serve (its answer is the stock cluster's
    above): PodGroupAPIUnavailable while it is so, and the gang runs once the API answers."""
    operator.pod_groups.version = "v1alpha0"
    try:
        jobs.create(native_job("nogates", 2))
        job = jobs.wait(
            "nogates",
            lambda j: (admitted(jobs, "nogates") or {}).get("reason") == "PodGroupAPIUnavailable",
            what="PodGroupAPIUnavailable",
        )
        c = next(x for x in job["status"]["conditions"] if x["type"] == "Admitted")
        assert c["status"] == "False" and "scheduling.k8s.io/v1alpha0" in c["message"]
        assert "the server could not find the requested resource" in c["message"]  # the apiserver's words
        assert job["status"]["state"] == "Queued" and jobs.pods("nogates") == []
        assert not any(x["type"] in ("Failed", "ReconcileError") and x["status"] == "True"
                       for x in job["status"]["conditions"])  # fmt: skip
    finally:
        operator.pod_groups.version = VERSION
    jobs.wait_pods("nogates", all_running(2), timeout=90, what="the gang running once the API answers")
