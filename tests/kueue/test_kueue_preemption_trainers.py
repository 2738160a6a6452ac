"""Preemption by real Kueue of a job of real trainers (the process node, dev/procnode), so the
checkpoint is real: the preempted trainers get SIGTERM, save a checkpoint and exit 143; the job's
next attempt, admitted by Kueue once the preemptor ends, resumes from exactly that step.

Marked kueue and e2e: it needs the process node (root) and the trainer images' Python (torch).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster.testing import Kubectl
from procnode.testing import NodeProcess
from tests.e2e.conftest import claim, e2e_operator, procnode  # noqa: F401  (fixtures)
from tests.e2e.training import JOB_TIMEOUT, committed_steps, kubectl_apply, training_job, wait_for
from tests.kueue.queues import GROUP, VERSION, delete_cluster_queue, local_queue
from tests.plugins.operator import JobClient, OperatorProcess
from tests.scheduling.conftest import priority_classes  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.kueue, pytest.mark.e2e]
# Slow enough that the preemption lands mid-run: 300 steps of at least 0.15 s.
LOW_ARGS = ["--steps", "300", "--batch-size", "16", "--seed", "7", "--checkpoint-every-steps", "10",
            "--step-sleep", "0.15", "--log-every", "10", "--out", "/checkpoints/final.pt"]  # fmt: skip
HIGH_ARGS = ["--steps", "20", "--batch-size", "16", "--checkpoint-every-steps", "10", "--log-every", "10",
             "--out", "/checkpoints/final.pt"]  # fmt: skip


@pytest.fixture
def cpu_queue(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """LocalQueue `team` on a ClusterQueue of 2 CPUs (one 2-rank job of 1 CPU per rank) that preempts
    lower priorities."""
    custom = client.CustomObjectsApi(api_client)
    name = f"cpu-{namespace}"
    custom.create_cluster_custom_object(GROUP, VERSION, "resourceflavors", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": name},
    })  # fmt: skip
    custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                 "resourceGroups": [{
                     "coveredResources": ["cpu", "memory"],
                     "flavors": [{"name": name, "resources": [{"name": "cpu", "nominalQuota": "2"},
                                                              {"name": "memory", "nominalQuota": "64Gi"}]}],
                 }]},
    })  # fmt: skip
    local_queue(custom, namespace, name)
    yield name
    custom.delete_collection_namespaced_custom_object("phalanx.dev", "v1alpha1", namespace, "trainingjobs")
    delete_cluster_queue(custom, name)


def test_preempted_trainers_save_a_checkpoint_and_the_next_attempt_resumes_from_it(
    e2e_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,  # noqa: F811
    claim: Callable[[str], Path], kubectl: Kubectl, cpu_queue: str,  # noqa: F811
    priority_classes: Callable[[str, int], str],  # noqa: F811
) -> None:  # fmt: skip
    low_class = priority_classes(f"{namespace}-low", 100)
    high_class = priority_classes(f"{namespace}-high", 1000)
    low_dir, _ = claim("low"), claim("high")
    low = training_job("low", "low", LOW_ARGS, runPolicy={"backoffLimit": 0},
                       scheduling={"queueName": "team", "priorityClassName": low_class})  # fmt: skip
    kubectl_apply(kubectl, namespace, low)
    wait_for("a committed checkpoint of the low job", lambda: committed_steps(low_dir))
    high = training_job("high", "high", HIGH_ARGS, scheduling={"queueName": "team", "priorityClassName": high_class})
    kubectl_apply(kubectl, namespace, high)

    def preempted() -> dict[str, Any] | None:
        c = jobs.condition("low", "Restarting") or {}
        return c if c.get("reason") == "Preempted" else None

    restarting = wait_for("the low job preempted", preempted, timeout=120)
    assert f"for TrainingJob {namespace}/high" in restarting["message"], restarting["message"]
    assert "Preempted to accommodate a workload" in restarting["message"], restarting["message"]

    # Attempt 1's ranks got SIGTERM, agreed on a step, saved it and exited 143.
    def saved_steps() -> set[int] | None:
        found = set()
        for i in range(2):
            runs = procnode.pod_runs(namespace, f"low-a1-worker-{i}")
            m = re.search(r"preempted at step (\d+) \(checkpoint saved\); exiting 143", runs[0].log()) if runs else None
            if not m:
                return None
            found.add(int(m.group(1)))
        return found

    saved = wait_for("attempt 1's SIGTERM checkpoint", saved_steps, timeout=60)
    assert len(saved) == 1, saved
    step = saved.pop()
    assert step in committed_steps(low_dir), (step, committed_steps(low_dir))
    assert step < 300, "the preemption landed after training ended; slow the job down"

    jobs.wait_state("high", "Succeeded", timeout=JOB_TIMEOUT)
    done = jobs.wait_state("low", "Succeeded", timeout=JOB_TIMEOUT)
    status = done["status"]
    assert (status["attempt"], status["restarts"]) == (2, 0), status  # backoffLimit 0: not counted
    assert status["resumedFromStep"] == step, status
    log = procnode.pod_log(namespace, "low-a2-worker-0")
    assert f"resumed from step {step} (attempt 2, world size 2 -> 2)" in log, log
    assert re.search(rf"^done step 300/300 .* world 2 resumed_from {step} ", log, re.M), log
