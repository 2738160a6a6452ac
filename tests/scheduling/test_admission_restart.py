"""The operator killed (SIGKILL) and restarted while gangs are gated: admission state lives in the pods.

The operator runs as its own process here (operator_process), so it can die like a crashed pod.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localcluster import sim
from tests.plugins.operator import JobClient, OperatorProcess, job_manifest
from tests.scheduling.conftest import PodWatch, all_running, gpu_job
from tests.scheduling.test_gang_admission import wait_admission


def admitted_since(jobs: JobClient, name: str) -> str:
    cond = jobs.condition(name, "Admitted")
    assert cond is not None
    return str(cond["lastTransitionTime"])


def uids(jobs: JobClient, name: str) -> dict[str, str]:
    return {p.metadata.name: p.metadata.uid for p in jobs.pods(name)}


def restarted(start: Callable[..., OperatorProcess], jobs: JobClient, probe: str) -> OperatorProcess:
    """A fresh operator, known to be past its start (caches filled): it ran a job created after it started."""
    op = start()
    jobs.create(job_manifest(probe, replicas=1))
    jobs.wait_state(probe, "Running", timeout=180)
    return op


def test_restart_while_gated_admits_no_gang_twice_and_loses_no_gate(
    jobs: JobClient, namespace: str, operator_process: Callable[..., OperatorProcess], pod_watch: PodWatch
) -> None:
    op = restarted(operator_process, jobs, "probe-0")
    jobs.create(gpu_job("a", 3))
    jobs.create(gpu_job("b", 3))
    jobs.wait_pods("a", all_running(3), timeout=90)
    wait_admission(jobs, "b", "InsufficientGPU")
    a_pods, a_since, b_since = uids(jobs, "a"), admitted_since(jobs, "a"), admitted_since(jobs, "b")

    # 1. Killed with a gated gang; one of its gated pods deleted meanwhile.
    op.kill()
    jobs.core.delete_namespaced_pod("b-a1-worker-2", namespace, grace_period_seconds=0)
    op = restarted(operator_process, jobs, "probe-1")
    b_pods = jobs.wait_pods("b", lambda ps: len(ps) == 3, what="b-worker-2 recreated")
    assert all(p.spec.scheduling_gates and not p.spec.node_name for p in b_pods)  # the new pod is gated too
    cond = wait_admission(jobs, "b", "InsufficientGPU")
    assert "8 free across 1 node(s)" in cond["message"]  # a's 3 nodes still count as taken
    assert admitted_since(jobs, "b") == b_since
    # a was not admitted again: same pods, same attempt, Admitted unchanged since before the crash.
    assert uids(jobs, "a") == a_pods and admitted_since(jobs, "a") == a_since
    assert jobs.get("a")["status"]["attempt"] == 1

    # 2. Killed half-way through lifting b's gates: a has finished and b-worker-0 is ungated (and
    #    binds), b-worker-1 and -2 still gated. The next operator must finish b, not queue it again.
    op.kill()
    for name in a_pods:
        sim.make_pod_succeed(jobs.core, namespace, name)
    jobs.wait_pods("a", lambda ps: all(p.status.phase == "Succeeded" for p in ps), what="a's pods done")
    jobs.core.patch_namespaced_pod("b-a1-worker-0", namespace, [{"op": "remove", "path": "/spec/schedulingGates"}])
    jobs.wait_pods("b", lambda ps: any(p.spec.node_name for p in ps), what="b-worker-0 bound")
    restarted(operator_process, jobs, "probe-2")
    b_pods = jobs.wait_pods("b", all_running(3), timeout=60, what="b running whole")
    assert len({p.spec.node_name for p in b_pods}) == 3
    assert jobs.wait_state("b", "Running")["status"]["attempt"] == 1
    cond_b: Any = jobs.condition("b", "Admitted")
    assert cond_b["status"] == "True" and cond_b["reason"] == "GangAdmitted"
    assert jobs.wait_state("a", "Succeeded")["status"]["attempt"] == 1

    # Throughout: no pod was ever left unschedulable, and a and b never held GPUs at once.
    assert pod_watch.unschedulable() == []
    assert not pod_watch.bound_at_once("a", "b")
