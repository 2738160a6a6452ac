"""Preemption by real Kueue of a job of real trainers in real containers, so the checkpoint is real: the
preempted trainers get SIGTERM from the kubelet, save a checkpoint and exit 143; the job's next
attempt, admitted by Kueue once the preemptor ends, resumes from exactly that step.

The chart's operator in-cluster creates and follows the Kueue Workloads (its RBAC grants them); Kueue
runs next to the session's cluster (tests/conftest.py) because this module is marked kueue.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import Kubectl
from tests.kueue.queues import GROUP, VERSION, delete_cluster_queue, make_queue
from tests.plugins.operator import JobClient
from tests.realnode.conftest import (
    JOB_TIMEOUT,
    JOBS_NAMESPACE,
    RealNode,
    apply,
    pod_logs,
    training_job,
    unique,
    wait_for,
)  # fmt: skip
from tests.realnode.training import committed_steps
from tests.scheduling.conftest import priority_classes  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.realnode, pytest.mark.kueue]
# Slow enough that the preemption lands mid-run: 300 steps of at least 0.15 s.
LOW_ARGS = ["--steps", "300", "--batch-size", "16", "--seed", "7", "--checkpoint-every-steps", "10",
            "--step-sleep", "0.15", "--log-every", "10", "--out", "/checkpoints/final.pt"]  # fmt: skip
HIGH_ARGS = ["--steps", "20", "--batch-size", "16", "--checkpoint-every-steps", "10", "--log-every", "10",
             "--out", "/checkpoints/final.pt"]  # fmt: skip
RANK_CPU = "500m"  # a 2-rank job fills the queue's 1 CPU


@pytest.fixture
def cpu_queue(api_client: client.ApiClient, phalanx_release: str) -> Iterator[str]:
    """LocalQueue `team` in JOBS_NAMESPACE on a ClusterQueue of 1 CPU (one 2-rank job) that preempts
    lower priorities."""
    custom = client.CustomObjectsApi(api_client)
    name = make_queue(custom, JOBS_NAMESPACE, unique("cpu"), {"cpu": "1", "memory": "64Gi"},
                      preemption={"withinClusterQueue": "LowerPriority"})  # fmt: skip
    yield name
    custom.delete_namespaced_custom_object(GROUP, VERSION, JOBS_NAMESPACE, "localqueues", "team")
    delete_cluster_queue(custom, name)


class LogFollower:
    """`kubectl logs -f` of a pod's trainer, collected in the background: the kubelet drops a container's
    log with its pod, and a preempted pod is deleted right after its trainer exits."""

    def __init__(self, kubectl: Kubectl, namespace: str, pod: str) -> None:
        cmd = [str(kubectl.exe), "--kubeconfig", str(kubectl.kubeconfig), "logs", "-f", "-n", namespace, pod,
               "-c", "trainer"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.text += line

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_preempted_trainers_save_a_checkpoint_and_the_next_attempt_resumes_from_it(
    node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]], kubectl: Kubectl, cpu_queue: str,
    priority_classes: Callable[[str, int], str],  # noqa: F811
) -> None:  # fmt: skip
    low, high = unique("low"), unique("high")
    low_class, high_class = priority_classes(f"{low}-prio", 100), priority_classes(f"{high}-prio", 1000)
    (low_claim, low_dir), (high_claim, _) = claim("low"), claim("high")
    apply(kubectl, training_job(low, low_claim, LOW_ARGS, cpu=RANK_CPU, runPolicy={"backoffLimit": 0},
                                scheduling={"queueName": "team", "priorityClassName": low_class}))  # fmt: skip
    wait_for("a committed checkpoint of the low job", lambda: committed_steps(low_dir), timeout=JOB_TIMEOUT)
    followers = [LogFollower(kubectl, JOBS_NAMESPACE, f"{low}-a1-worker-{i}") for i in range(2)]
    try:
        apply(kubectl, training_job(high, high_claim, HIGH_ARGS, cpu=RANK_CPU,
                                    scheduling={"queueName": "team", "priorityClassName": high_class}))  # fmt: skip

        def preempted() -> dict[str, Any] | None:
            c = jobs.condition(low, "Restarting") or {}
            return c if c.get("reason") == "Preempted" else None

        restarting = wait_for("the low job preempted", preempted, timeout=120)
        assert f"for TrainingJob {JOBS_NAMESPACE}/{high}" in restarting["message"], restarting["message"]
        assert "Preempted to accommodate a workload" in restarting["message"], restarting["message"]

        # Attempt 1's ranks got SIGTERM, agreed on a step, saved it and exited 143.
        def saved_steps() -> set[int] | None:
            found = [re.search(r"preempted at step (\d+) \(checkpoint saved\); exiting 143", f.text) for f in followers]
            return {int(m.group(1)) for m in found if m} if all(found) else None

        saved = wait_for("attempt 1's SIGTERM checkpoint", saved_steps, timeout=60)
    finally:
        for f in followers:
            f.stop()
    assert len(saved) == 1, saved
    step = saved.pop()
    print(f"preempted: the ranks saved step {step} on SIGTERM")
    assert step in committed_steps(low_dir), (step, committed_steps(low_dir))
    assert step < 300, "the preemption landed after training ended; slow the job down"

    jobs.wait_state(high, "Succeeded", timeout=JOB_TIMEOUT)
    done = jobs.wait_state(low, "Succeeded", timeout=JOB_TIMEOUT)
    status = done["status"]
    assert (status["attempt"], status["restarts"]) == (2, 0), status  # backoffLimit 0: not counted
    assert status["resumedFromStep"] == step, status
    log = pod_logs(kubectl, JOBS_NAMESPACE, f"{low}-a2-worker-0")
    assert f"resumed from step {step} (attempt 2, world size 2 -> 2)" in log, log
    assert re.search(rf"^done step 300/300 .* world 2 resumed_from {step} ", log, re.M), log
