"""Hang and straggler detection with real trainer processes on the process node (docs/health.md).

A rank SIGSTOPped mid-run stops answering and its peer blocks in the next all-reduce: the operator
sees no rank advance, restarts the gang with reason Hung, and the gang resumes from its checkpoint to
Succeeded. A rank slowed with the example trainer's --slow-rank is named as the straggler.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.testing import Kubectl
from phalanx.core.observe import parse_time
from procnode.testing import NodeProcess
from tests.e2e.training import (
    JOB_TIMEOUT,
    committed_steps,
    job_events,
    kubectl_apply,
    trainer_pid,
    training_job,
    wait_for,
)
from tests.plugins.operator import JobClient, OperatorProcess

pytestmark = pytest.mark.e2e

SCRAPE_INTERVAL = 1.0
DEADLINE = 10  # progressDeadlineSeconds (the smallest the API accepts)
# How much later than deadline + one scrape interval the restart may be stamped: the step the peer
# still finishes after the stop, the stopped rank's scrape timing out (0.5 s), the reconcile, and the
# one-second resolution of condition times.
SLACK = 3.0


@pytest.fixture(scope="module")
def health_operator(crd: Path, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {"PHALANX_SCRAPE_INTERVAL_SECONDS": str(SCRAPE_INTERVAL), "PHALANX_SCRAPE_TIMEOUT_SECONDS": "0.5"}
    op = OperatorProcess(kubeconfig, log, env=env)
    yield op
    op.stop()


def quick_grace(manifest: dict[str, Any]) -> dict[str, Any]:
    """A SIGSTOPped trainer ignores SIGTERM: a short grace period makes its SIGKILL come soon."""
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 3
    return manifest


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def test_sigstopped_rank_is_hung_the_gang_restarts_and_resumes_to_succeeded(
    health_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim_dir = claim("ckpt")
    args = ["--steps", "150", "--batch-size", "16", "--seed", "7", "--checkpoint-every-steps", "10",
            "--step-sleep", "0.1", "--log-every", "10"]  # fmt: skip
    manifest = quick_grace(training_job("hung", "ckpt", args, runPolicy={"backoffLimit": 3}))
    manifest["spec"]["runPolicy"]["progressDeadlineSeconds"] = DEADLINE
    kubectl_apply(kubectl, namespace, manifest)
    wait_for("a committed checkpoint", lambda: committed_steps(claim_dir))
    victim = next(p for p in jobs.pods("hung") if p.metadata.name == "hung-a1-worker-1")
    pid = trainer_pid(victim)
    os.kill(pid, signal.SIGSTOP)
    stopped_at = datetime.now(UTC)
    # Never SIGCONT: the node SIGKILLs the stopped trainer after the grace period, as a kubelet would.
    job = jobs.wait("hung", lambda j: (j.get("status") or {}).get("attempt") == 2, DEADLINE + 60, "the Hung restart")
    restarting = condition(job, "Restarting")
    assert restarting is not None and restarting["reason"] == "Hung", yaml.safe_dump(job["status"])
    message = restarting["message"]
    assert "pod hung-a1-worker-1" in message and "stopped first" in message and "last step" in message, message
    restarted_at = parse_time(restarting["lastTransitionTime"])
    assert restarted_at is not None
    detected_after = (restarted_at - stopped_at).total_seconds()
    print(f"hang detected {detected_after:.1f}s after SIGSTOP (deadline {DEADLINE}s, scrape {SCRAPE_INTERVAL}s)")
    assert detected_after <= DEADLINE + SCRAPE_INTERVAL + SLACK, message
    last_committed = committed_steps(claim_dir)[-1]

    job = jobs.wait_state("hung", "Succeeded", timeout=JOB_TIMEOUT)
    status = job["status"]
    assert (status["attempt"], status["restarts"]) == (2, 1), yaml.safe_dump(status)
    assert status["lostTime"]["hungSeconds"] >= DEADLINE
    assert any("no rank advanced" in e for e in job_events(kubectl, namespace, "hung"))
    second = procnode.pod_runs(namespace, "hung-a2-worker-0")[-1].log()
    assert f"resumed from step {last_committed} (attempt 2" in second, second
    assert "done step 150/150" in second, second


def test_slowed_rank_is_named_as_the_straggler_and_the_healthy_one_is_not(
    health_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim("ckpt")
    args = ["--steps", "100000", "--batch-size", "16", "--step-sleep", "0.02", "--log-every", "50",
            "--slow-rank", "1", "--slow-sleep", "0.1"]  # fmt: skip
    kubectl_apply(kubectl, namespace, quick_grace(training_job("slow", "ckpt", args)))

    def named() -> dict[str, Any] | None:
        c = condition(jobs.get("slow"), "Straggler")
        return c if c is not None and c["status"] == "True" else None

    c = wait_for("the Straggler condition", named, timeout=JOB_TIMEOUT)
    node = procnode.name
    assert c["message"].startswith(f"slow-a1-worker-1 on {node} is "), c["message"]
    assert "slow-a1-worker-0" not in c["message"], c["message"]
    ratio = float(c["message"].split(" is ")[1].split("x")[0])
    assert ratio >= 1.5, c["message"]
    assert any("slow-a1-worker-1" in e for e in job_events(kubectl, namespace, "slow"))
    job = jobs.get("slow")
    assert job["status"]["attempt"] == 1  # reported, not restarted: health.straggler.restart is off


# --- preflight ----------------------------------------------------------------------------------------

PREFLIGHT = {"allReduceBytes": 4 * 2**20, "timeoutSeconds": 60}
SHORT = ["--steps", "20", "--batch-size", "16", "--log-every", "10"]


def test_preflight_passes_and_its_bandwidth_is_in_status(
    health_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim("ckpt")
    manifest = training_job("pre", "ckpt", [*SHORT, "--step-sleep", "0.3"], preflight=PREFLIGHT)
    kubectl_apply(kubectl, namespace, quick_grace(manifest))
    job = jobs.wait("pre", lambda j: bool((j.get("status") or {}).get("preflight")), JOB_TIMEOUT, "status.preflight")
    pre = job["status"]["preflight"]
    assert pre["attempt"] == 1 and pre["seconds"] > 0 and pre["busBandwidthBytesPerSecond"] > 0, pre
    print(f"preflight: {pre['seconds']}s, bus bandwidth {pre['busBandwidthBytesPerSecond'] / 1e9:.3f} GB/s (4 MiB)")
    job = jobs.wait_state("pre", "Succeeded", timeout=JOB_TIMEOUT)
    assert job["status"]["lostTime"]["preflightSeconds"] > 0
    log = procnode.pod_log(namespace, "pre-a1-worker-0")
    assert "preflight passed in" in log and "done step 20/20" in log, log


def test_preflight_fails_fast_naming_the_pod_and_the_peer_that_does_not_resolve(
    health_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim("ckpt")
    # The pods' own names resolve on the node; one more peer that exists nowhere stands for a DNS
    # problem (the user's env wins over the operator's, the documented escape hatch).
    peers = ",".join([f"bad-worker-{i}.bad.{namespace}.svc" for i in range(2)] + [f"ghost.bad.{namespace}.svc"])
    manifest = training_job(
        "bad", "ckpt", SHORT, env=[{"name": "PHALANX_PREFLIGHT_PEERS", "value": peers}],
        preflight={**PREFLIGHT, "timeoutSeconds": 8}, runPolicy={"backoffLimit": 0},
    )  # fmt: skip
    kubectl_apply(kubectl, namespace, quick_grace(manifest))
    job = jobs.wait_state("bad", "Failed", timeout=JOB_TIMEOUT)
    failed = condition(job, "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded", yaml.safe_dump(job["status"])
    message = failed["message"]
    assert f"preflight failed in pod bad-a1-worker-0 on node {procnode.name}" in message or (
        f"preflight failed in pod bad-a1-worker-1 on node {procnode.name}" in message
    ), message
    assert re.search(rf"peer ghost\.bad\.{namespace}\.svc does not resolve after \d+s", message), message
    started = parse_time(job["status"]["startTime"]) if job["status"].get("startTime") else None
    ended = parse_time(job["status"]["completionTime"])
    if started and ended:
        print(f"preflight failure: job Failed {(ended - started).total_seconds():.0f}s after its pods ran")
    assert "step " not in procnode.pod_log(namespace, "bad-a1-worker-0")  # it never began training
