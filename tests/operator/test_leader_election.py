"""Leader election against the real control plane: one of several operators acts; a standby takes over
when the leader is SIGTERMed (at once: the lease is released) or SIGKILLed (when the lease runs out)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import Kubectl, wait_for
from tests.operator.churn import Fleet, PodLedger, manifest, verify, wait_settled
from tests.plugins.operator import TEST_LEASE, JobClient, OperatorProcess, job_manifest

pytestmark = pytest.mark.cluster


@pytest.fixture
def coordination(api_client: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client)


@pytest.fixture
def fleet(operator_process: Callable[..., OperatorProcess], coordination: client.CoordinationV1Api) -> Fleet:
    return Fleet(operator_process, coordination)


def running(jobs: JobClient, name: str, n: int, attempt: int = 1) -> list[Any]:
    return jobs.wait_pods(
        name,
        lambda ps: (
            len(ps) == n
            and all(
                p.status.phase == "Running" and p.metadata.labels["phalanx.dev/attempt"] == str(attempt) for p in ps
            )
        ),
        timeout=90,
        what=f"{n} pods of attempt {attempt} running",
    )


def leader_of(fleet: Fleet) -> OperatorProcess:
    wait_for(lambda: fleet.leader(), timeout=60, what="a leader")
    leader = fleet.leader()
    assert leader is not None
    return leader


def test_two_operators_end_a_workload_with_failures_right(
    fleet: Fleet, jobs: JobClient, namespace: str, kubectl: Kubectl
) -> None:
    """The workload that corrupted gangs with two operators and no election (issue 16)."""
    fleet.start(2)
    plan = {f"ok-{i}": "succeed" for i in range(4)}
    plan |= {f"retry-{i}": "retry" for i in range(3)}
    plan |= {f"fatal-{i}": "fatal" for i in range(2)}
    plan |= {f"scale-{i}": "scaled" for i in range(3)}
    replicas = {name: 2 for name in plan}
    with PodLedger(jobs.core, namespace) as ledger:
        for name, kind in plan.items():
            jobs.create(manifest(name, kind, 2))
        for name in (n for n, k in plan.items() if k == "scaled"):
            running(jobs, name, 2)
            kubectl("scale", "-n", namespace, f"tj/{name}", "--replicas=3")
            replicas[name] = 3
        wait_settled(jobs, plan, timeout=180)
        for name in (n for n, k in plan.items() if k == "scaled"):
            running(jobs, name, 3, attempt=2)
        outcome = verify(jobs, ledger, plan, replicas)
    assert not outcome.problems, "\n".join(outcome.problems)
    assert len([m for m in fleet.members if m.alive()]) == 2


def test_sigterm_hands_the_lease_over_at_once_and_the_standby_acts(fleet: Fleet, jobs: JobClient) -> None:
    fleet.start(2)
    leader = leader_of(fleet)
    standby = next(m for m in fleet.members if m is not leader)
    jobs.create(job_manifest("before", replicas=2))
    running(jobs, "before", 2)
    transitions = fleet.lease().spec.lease_transitions  # type: ignore[union-attr]

    leader.terminate()
    leader.proc.wait(30)
    assert leader.proc.returncode == 0, leader.log()[-3000:]
    assert "released lease" in leader.log()
    wait_for(lambda: fleet.holder() == standby.env["PHALANX_POD_NAME"], timeout=30, what="the standby leading")
    assert fleet.lease().spec.lease_transitions == transitions + 1  # type: ignore[union-attr]

    jobs.create(job_manifest("after", replicas=2))  # only the new leader can start it
    running(jobs, "after", 2)
    assert jobs.get("before")["status"]["attempt"] == 1  # the failover restarted nothing
    assert "leads now; acting" in standby.log()


def test_sigkill_the_standby_takes_over_once_the_lease_runs_out(fleet: Fleet, jobs: JobClient) -> None:
    fleet.start(2)
    leader = leader_of(fleet)
    standby = next(m for m in fleet.members if m is not leader)
    jobs.create(job_manifest("before", replicas=2))
    running(jobs, "before", 2)

    leader.kill()  # no release: the lease stays held by the dead leader until it runs out
    killed_at = datetime.now(UTC)
    assert fleet.holder() == leader.env["PHALANX_POD_NAME"]
    jobs.create(job_manifest("after", replicas=2))
    running(jobs, "after", 2)
    lease = fleet.lease()
    assert lease is not None and lease.spec.holder_identity == standby.env["PHALANX_POD_NAME"]
    assert lease.spec.acquire_time > killed_at
    assert jobs.get("before")["status"]["attempt"] == 1


@pytest.fixture
def foreign_lease(coordination: client.CoordinationV1Api, fleet: Fleet) -> Iterator[Callable[[], None]]:
    """The fleet's Lease held by someone else who renews it until told to stop."""
    name = f"phalanx-foreign-{int(time.time() * 1000) % 10**8}"
    fleet.env = {"PHALANX_LEASE_NAME": name}
    ns = TEST_LEASE["PHALANX_LEASE_NAMESPACE"]
    stop = threading.Event()

    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    spec = {"holderIdentity": "someone-else", "leaseDurationSeconds": 4, "acquireTime": now(), "renewTime": now()}
    coordination.create_namespaced_lease(ns, {"metadata": {"name": name}, "spec": spec})

    def renew() -> None:
        while not stop.wait(0.5):
            coordination.patch_namespaced_lease(name, ns, {"spec": {"renewTime": now()}})

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    yield stop.set
    stop.set()
    renewer.join(5)
    coordination.delete_namespaced_lease(name, ns)


def test_a_standby_writes_nothing_until_it_holds_the_lease(
    fleet: Fleet, jobs: JobClient, foreign_lease: Callable[[], None]
) -> None:
    fleet.start(1)
    (op,) = fleet.members
    wait_for(lambda: "leader election: lease" in op.log() or None, timeout=60, what="the operator contending")
    jobs.create(job_manifest("waits", replicas=2))
    time.sleep(6)  # longer than the lease: a standby that acted would have created pods or status by now
    assert jobs.pods("waits") == []
    assert not jobs.get("waits").get("status")
    assert fleet.holder() == "someone-else"

    foreign_lease()  # the holder stops renewing: the operator takes over once the lease runs out
    running(jobs, "waits", 2)
    assert fleet.holder() == op.env["PHALANX_POD_NAME"]
