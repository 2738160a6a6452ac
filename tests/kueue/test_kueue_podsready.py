"""Kueue's readiness timeout (waitForPodsReady) against real Kueue, with simulated (kwok) pods.

The session's Kueue runs with a short waitForPodsReady timeout (dev/localcluster/kueue.py, 30 s on kwok
nodes). Kueue, not phalanx, decides: it evicts an admitted Workload whose PodsReady condition is not
True in time (reason PodsReadyTimeout). phalanx reports PodsReady=True once the gang runs, and on the
eviction stops the gang and starts the next attempt with a Workload of its own, counted as a gang
restart against backoffLimit (docs/scheduling.md, "Preemption and readiness eviction").

A rank that cannot start is a pod kwok keeps Pending with its container in ContainerCreating, as a
kubelet does while it pulls an image (the sim.phalanx.dev/hold annotation, dev/localcluster/stages/
sim-hold.yaml). Every pod of these jobs carries it from the template; the test releases the pods it
wants to start.

The checkpoint phalanx knows comes from its own scraper: rank 0 of the first attempt points (podIP) at
a real trainer metrics endpoint on this host that reports a committed checkpoint.
"""

from __future__ import annotations

import logging
import socket
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import sim
from localcluster.testing import wait_for
from phalanx.core import kueue
from phalanx.core.names import FIELD_MANAGER
from phalanx_trainer.metrics import TrainerMetrics
from tests.kueue.queues import GROUP, H100, VERSION, drop_queue, make_queue
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import gpu_job

pytestmark = pytest.mark.kueue
log = logging.getLogger(__name__)
CHECKPOINT_STEP = 30


@pytest.fixture
def queue(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """LocalQueue `team` on a ClusterQueue of 16 GPUs (the H100 kwok nodes)."""
    name = make_queue(client.CustomObjectsApi(api_client), namespace, f"rdy-{namespace}", {"nvidia.com/gpu": "16"},
                      node_labels=H100)  # fmt: skip
    yield name
    drop_queue(api_client, namespace, name)


def workload(jobs: JobClient, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = jobs.custom.get_namespaced_custom_object(GROUP, VERSION, jobs.ns, "workloads", name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found


def pods_ready(jobs: JobClient, name: str) -> dict[str, Any] | None:
    """The Workload once its PodsReady condition is True."""
    w = workload(jobs, name)
    return w if condition(w, "PodsReady").get("status") == "True" else None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def since(cond: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))


def job_pods(jobs: JobClient, name: str, attempt: int) -> list[client.V1Pod]:
    """The attempt's pods that are not being deleted."""
    return [
        p
        for p in jobs.pods(name)
        if (p.metadata.labels or {}).get("phalanx.dev/attempt") == str(attempt) and not p.metadata.deletion_timestamp
    ]


def held_job(name: str, backoff_limit: int, **spec: Any) -> dict[str, Any]:
    """Two 8-GPU ranks on LocalQueue `team` whose pods stay in ContainerCreating until released."""
    return gpu_job(
        name, replicas=2, scheduling={"queueName": "team"}, runPolicy={"backoffLimit": backoff_limit},
        podAnnotations=sim.hold_annotations(), **spec,
    )  # fmt: skip


def release(jobs: JobClient, name: str, attempt: int, ranks: tuple[int, ...]) -> None:
    pods = jobs.wait_pods(name, lambda _: len(job_pods(jobs, name, attempt)) == 2, what=f"attempt {attempt}'s pods")
    assert all(sim.HOLD in (p.metadata.annotations or {}) for p in pods if p.metadata.deletion_timestamp is None)
    for rank in ranks:
        sim.release_pod(jobs.core, jobs.ns, f"{name}-a{attempt}-worker-{rank}")


@pytest.fixture
def checkpoint_endpoint(namespace: str) -> tuple[str, int]:
    """A real trainer metrics endpoint on 127.0.0.x (inside the operator's PHALANX_SCRAPE_NETWORKS) that
    reports a committed checkpoint at CHECKPOINT_STEP; its server thread lives as long as this process."""
    ip = f"127.0.{zlib.crc32(namespace.encode()) % 250 + 2}.{zlib.crc32(namespace[::-1].encode()) % 250 + 2}"
    with socket.socket() as s:
        s.bind((ip, 0))
        port = s.getsockname()[1]
    m = TrainerMetrics()
    m.set_identity(world_size=2, rank=0, attempt=1, procs_per_pod=1)
    for _ in range(5):
        m.observe_step(0.1, 4)
    m.set_last_checkpoint(CHECKPOINT_STEP, time.time())
    m.serve(port, addr=ip)
    return ip, port


def test_a_ready_gang_gets_pods_ready_from_phalanx_and_is_not_evicted_past_the_timeout(
    operator: Any, jobs: JobClient, queue: str, ready_timeout: float
) -> None:
    jobs.create(gpu_job("steady", replicas=2, scheduling={"queueName": "team"}, runPolicy={"backoffLimit": 0}))
    jobs.wait_state("steady", "Running", timeout=120)
    wl = wait_for(lambda: pods_ready(jobs, "steady-a1"), timeout=30, what="steady-a1 PodsReady=True")
    writers = {
        f.get("manager")
        for f in wl["metadata"].get("managedFields") or []
        if f.get("subresource") == "status" and 'k:{"type":"PodsReady"}' in str(f.get("fieldsV1"))
    }
    assert writers == {FIELD_MANAGER}, wl["metadata"].get("managedFields")
    admitted = since(condition(wl, "Admitted"))
    ready = since(condition(wl, "PodsReady"))
    log.info("steady-a1: PodsReady=True %.1fs after admission", (ready - admitted).total_seconds())
    # Past Kueue's timeout (with room for its 1 s requeue granularity): still admitted, not evicted.
    left = admitted.timestamp() + ready_timeout + 10 - time.time()
    time.sleep(max(left, 0))
    wl = workload(jobs, "steady-a1")
    assert condition(wl, "Admitted").get("status") == "True", wl
    assert condition(wl, "Evicted").get("status") != "True", condition(wl, "Evicted")
    status = jobs.get("steady")["status"]
    assert (status["state"], status["attempt"], status["restarts"]) == ("Running", 1, 0), status


def test_a_gang_not_ready_in_time_is_evicted_by_kueue_and_restarts_keeping_its_checkpoint(
    operator: Any, jobs: JobClient, queue: str, ready_timeout: float, checkpoint_endpoint: tuple[str, int]
) -> None:
    ip, port = checkpoint_endpoint
    jobs.create(held_job("slow", backoff_limit=2, metrics={"port": port}))

    # Attempt 1 starts and runs; phalanx's scraper learns of a committed checkpoint from rank 0.
    release(jobs, "slow", 1, ranks=(0, 1))
    jobs.wait_state("slow", "Running", timeout=120)
    jobs.core.patch_namespaced_pod_status("slow-a1-worker-0", jobs.ns, [
        {"op": "replace", "path": "/status/podIP", "value": ip},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]},
    ])  # fmt: skip
    jobs.wait(
        "slow", lambda j: ((j.get("status") or {}).get("lastCheckpoint") or {}).get("step") == CHECKPOINT_STEP,
        timeout=90, what=f"lastCheckpoint step {CHECKPOINT_STEP}",
    )  # fmt: skip

    # Rank 1 is killed (exit 137): a gang restart, counted. Attempt 2's rank 1 then never starts.
    sim.make_pod_fail(jobs.core, jobs.ns, "slow-a1-worker-1", exit_code=137)
    jobs.wait("slow", lambda j: (j.get("status") or {}).get("attempt") == 2, timeout=60, what="attempt 2")
    release(jobs, "slow", 2, ranks=(0,))

    # Kueue evicts attempt 2's Workload once its timeout has passed since admission.
    def evicted() -> dict[str, Any] | None:
        w = workload(jobs, "slow-a2")
        return w if condition(w, "Evicted").get("status") == "True" else None

    wl = wait_for(evicted, timeout=ready_timeout + 90, interval=0.25, what="slow-a2 Evicted")
    ev = condition(wl, "Evicted")
    assert ev["reason"] == kueue.PODS_READY_TIMEOUT, ev
    assert ev["message"] == f"Exceeded the PodsReady timeout {jobs.ns}/slow-a2", ev  # Kueue's own words
    log.info(
        "slow-a2: Evicted (%s) %.1fs after admission, waitForPodsReady timeout %gs",
        ev["reason"], (since(ev) - since(condition(wl, "Admitted"))).total_seconds(), ready_timeout,
    )  # fmt: skip
    pods = {p.metadata.name: p for p in job_pods(jobs, "slow", 2)}
    if pods:  # phalanx may already be deleting them
        assert pods["slow-a2-worker-1"].status.phase == "Pending"

    # phalanx: attempt 3, the eviction counted as restart 2 of 2, Kueue's words and the checkpoint kept.
    job = jobs.wait("slow", lambda j: (j.get("status") or {}).get("attempt") == 3, timeout=30, what="attempt 3")
    status = job["status"]
    assert status["restarts"] == 2, status
    assert status["lastCheckpoint"]["step"] == CHECKPOINT_STEP, status
    restarting = condition(job, "Restarting")
    assert (restarting["status"], restarting["reason"]) == ("True", kueue.PODS_READY_TIMEOUT), restarting
    message = restarting["message"]
    assert f"Kueue evicted Workload slow-a2 (PodsReadyTimeout): Exceeded the PodsReady timeout {jobs.ns}/slow-a2" in (
        message
    ), message
    assert f"last committed checkpoint: step {CHECKPOINT_STEP}" in message, message
    assert "attempt 3" in message and "(restart 2 of 2)" in message, message

    # The evicted Workload goes once its pods are gone; attempt 3's own Workload is admitted again at
    # once, with no requeue state (Kueue's 60 s requeuing backoff applies to the evicted one only).
    wait_for(lambda: workload(jobs, "slow-a2") is None, timeout=60, what="slow-a2 deleted")
    release(jobs, "slow", 3, ranks=(0, 1))
    again = jobs.wait_state("slow", "Running", timeout=60)
    wl3 = workload(jobs, "slow-a3")
    assert condition(wl3, "Admitted").get("status") == "True", wl3
    log.info(
        "slow-a3: admitted %.1fs after slow-a2's eviction",
        (since(condition(wl3, "Admitted")) - since(ev)).total_seconds(),
    )
    assert not (wl3 or {}).get("status", {}).get("requeueState"), wl3
    status = again["status"]
    assert (status["attempt"], status["restarts"]) == (3, 2), status
    assert status["lastCheckpoint"]["step"] == CHECKPOINT_STEP, status
    assert condition(again, "Restarting").get("status") == "False"
    wait_for(lambda: pods_ready(jobs, "slow-a3"), timeout=30, what="slow-a3 PodsReady=True")
    assert {w["metadata"]["name"] for w in jobs.custom.list_namespaced_custom_object(
        GROUP, VERSION, jobs.ns, "workloads")["items"]} == {"slow-a3"}  # fmt: skip


def test_readiness_evictions_are_bounded_by_backoff_limit(
    operator: Any, jobs: JobClient, queue: str, ready_timeout: float
) -> None:
    jobs.create(held_job("never", backoff_limit=0))
    wait_for(
        lambda: condition(workload(jobs, "never-a1"), "Admitted").get("status") == "True",
        timeout=60, what="never-a1 admitted",
    )  # fmt: skip
    job = jobs.wait_state("never", "Failed", timeout=ready_timeout + 90)
    status = job["status"]
    assert (status["attempt"], status["restarts"]) == (1, 0), status
    failed = condition(job, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded", failed
    assert f"Exceeded the PodsReady timeout {jobs.ns}/never-a1" in failed["message"], failed
    assert "0 gang restarts used of backoffLimit=0" in failed["message"], failed
    wait_for(lambda: workload(jobs, "never-a1") is None, timeout=60, what="never-a1 deleted")
