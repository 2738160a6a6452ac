"""Hang, straggler and preflight with the reference trainers in real containers (docs/health.md): the
chart's operator in-cluster scrapes the ranks at their pod IPs every second.

A rank SIGSTOPped from the host stops answering and its peer blocks in the next all-reduce: the operator
sees no rank advance, restarts the gang with reason Hung, and the gang resumes from its checkpoint to
Succeeded. A rank slowed with the example trainer's --slow-rank is named as the straggler. Preflight's
all-reduce measures the bus over the pod network, and a peer that cluster DNS does not know fails it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import realnode
from localcluster.testing import Kubectl
from phalanx.core.observe import parse_time
from tests.plugins.operator import JobClient
from tests.realnode.conftest import (
    JOB_TIMEOUT,
    JOBS_NAMESPACE,
    SCRAPE_INTERVAL,
    SCRAPE_TIMEOUT,
    RealNode,
    apply,
    pod_logs,
    training_job,
    unique,
    wait_for,
)  # fmt: skip
from tests.realnode.training import committed_steps, job_events

pytestmark = pytest.mark.realnode

Claim = Callable[[str], tuple[str, Path]]
DEADLINE = 10  # progressDeadlineSeconds (the smallest the API accepts)
# How much later than deadline + one scrape interval the restart may be stamped: the step the peer
# still finishes after the stop, the stopped rank's scrape timing out, the reconcile, and the
# one-second resolution of condition times.
SLACK = 2.5 + SCRAPE_TIMEOUT


def quick_grace(manifest: dict[str, Any]) -> dict[str, Any]:
    """A SIGSTOPped trainer ignores SIGTERM: a short grace period makes the kubelet's SIGKILL come soon."""
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 3
    return manifest


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def test_sigstopped_rank_is_hung_the_gang_restarts_and_resumes_to_succeeded(
    node: RealNode, jobs: JobClient, claim: Claim, kubectl: Kubectl
) -> None:
    name, (claim_name, claim_dir) = unique("hung"), claim("hung")
    args = ["--steps", "150", "--batch-size", "16", "--seed", "7", "--checkpoint-every-steps", "10",
            "--step-sleep", "0.1", "--log-every", "10"]  # fmt: skip
    manifest = quick_grace(training_job(name, claim_name, args))
    manifest["spec"]["runPolicy"]["progressDeadlineSeconds"] = DEADLINE
    apply(kubectl, manifest)
    wait_for("a committed checkpoint", lambda: committed_steps(claim_dir), timeout=JOB_TIMEOUT)
    victim = next(p for p in jobs.pods(name) if p.metadata.name == f"{name}-a1-worker-1")
    node.kill_container(victim, signal="SIGSTOP")
    stopped_at = datetime.now(UTC)
    # Never SIGCONT: the kubelet SIGKILLs the stopped trainer after the grace period.
    job = jobs.wait(name, lambda j: (j.get("status") or {}).get("attempt") == 2, DEADLINE + 60, "the Hung restart")
    restarting = condition(job, "Restarting")
    assert restarting is not None and restarting["reason"] == "Hung", yaml.safe_dump(job["status"])
    message = restarting["message"]
    assert f"pod {name}-a1-worker-1" in message and "stopped first" in message and "last step" in message, message
    restarted_at = parse_time(restarting["lastTransitionTime"])
    assert restarted_at is not None
    detected_after = (restarted_at - stopped_at).total_seconds()
    print(f"hang detected {detected_after:.1f}s after SIGSTOP (deadline {DEADLINE}s, scrape {SCRAPE_INTERVAL}s)")
    assert detected_after <= DEADLINE + SCRAPE_INTERVAL + SLACK, message
    last_committed = committed_steps(claim_dir)[-1]

    job = jobs.wait_state(name, "Succeeded", timeout=JOB_TIMEOUT)
    status = job["status"]
    assert (status["attempt"], status["restarts"]) == (2, 1), yaml.safe_dump(status)
    assert status["lostTime"]["hungSeconds"] >= DEADLINE
    assert any("no rank advanced" in e for e in job_events(kubectl, JOBS_NAMESPACE, name))
    second = pod_logs(kubectl, JOBS_NAMESPACE, f"{name}-a2-worker-0")
    assert f"resumed from step {last_committed} (attempt 2" in second, second
    assert "done step 150/150" in second, second


def test_slowed_rank_is_named_as_the_straggler_and_the_healthy_one_is_not(
    node: RealNode, jobs: JobClient, claim: Claim, kubectl: Kubectl
) -> None:
    name, (claim_name, _) = unique("slow"), claim("slow")
    args = ["--steps", "100000", "--batch-size", "16", "--step-sleep", "0.02", "--log-every", "50",
            "--slow-rank", "1", "--slow-sleep", "0.1"]  # fmt: skip
    apply(kubectl, quick_grace(training_job(name, claim_name, args)))

    def named() -> dict[str, Any] | None:
        c = condition(jobs.get(name), "Straggler")
        return c if c is not None and c["status"] == "True" else None

    c = wait_for("the Straggler condition", named, timeout=JOB_TIMEOUT)
    assert c["message"].startswith(f"{name}-a1-worker-1 on {realnode.NODE_NAME} is "), c["message"]
    assert f"{name}-a1-worker-0" not in c["message"], c["message"]
    ratio = float(c["message"].split(" is ")[1].split("x")[0])
    assert ratio >= 1.5, c["message"]
    assert any(f"{name}-a1-worker-1" in e for e in job_events(kubectl, JOBS_NAMESPACE, name))
    assert jobs.get(name)["status"]["attempt"] == 1  # reported, not restarted: health.straggler.restart is off


# --- preflight ----------------------------------------------------------------------------------------

PREFLIGHT = {"allReduceBytes": 4 * 2**20, "timeoutSeconds": 60}
SHORT = ["--steps", "20", "--batch-size", "16", "--log-every", "10"]


def test_preflight_passes_over_the_pod_network_and_its_bandwidth_is_in_status(
    node: RealNode, jobs: JobClient, claim: Claim, kubectl: Kubectl
) -> None:
    name, (claim_name, _) = unique("pre"), claim("pre")
    apply(kubectl, quick_grace(training_job(name, claim_name, [*SHORT, "--step-sleep", "0.3"], preflight=PREFLIGHT)))
    job = jobs.wait(name, lambda j: bool((j.get("status") or {}).get("preflight")), JOB_TIMEOUT, "status.preflight")
    pre = job["status"]["preflight"]
    assert pre["attempt"] == 1 and pre["seconds"] > 0 and pre["busBandwidthBytesPerSecond"] > 0, pre
    print(f"preflight: {pre['seconds']}s, bus bandwidth {pre['busBandwidthBytesPerSecond'] / 1e9:.3f} GB/s (4 MiB)")
    job = jobs.wait_state(name, "Succeeded", timeout=JOB_TIMEOUT)
    assert job["status"]["lostTime"]["preflightSeconds"] > 0
    log = pod_logs(kubectl, JOBS_NAMESPACE, f"{name}-a1-worker-0")
    assert "preflight passed in" in log and "done step 20/20" in log, log


def test_preflight_fails_fast_naming_the_pod_and_the_peer_cluster_dns_does_not_know(
    node: RealNode, jobs: JobClient, claim: Claim, kubectl: Kubectl
) -> None:
    name, (claim_name, _) = unique("bad"), claim("bad")
    # The ranks' own names resolve through the headless Service; one more peer that exists nowhere
    # stands for a DNS problem (the user's env wins over the operator's, the documented escape hatch).
    ns = JOBS_NAMESPACE
    ghost = f"ghost.{name}.{ns}.svc"
    peers = ",".join([f"{name}-worker-{i}.{name}.{ns}.svc" for i in range(2)] + [ghost])
    manifest = training_job(
        name, claim_name, SHORT, env=[{"name": "PHALANX_PREFLIGHT_PEERS", "value": peers}],
        preflight={**PREFLIGHT, "timeoutSeconds": 8}, runPolicy={"backoffLimit": 0},
    )  # fmt: skip
    apply(kubectl, quick_grace(manifest))
    job = jobs.wait_state(name, "Failed", timeout=JOB_TIMEOUT)
    failed = condition(job, "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded", yaml.safe_dump(job["status"])
    message = failed["message"]
    pod = re.search(rf"preflight failed in pod ({name}-a1-worker-[01]) on node {realnode.NODE_NAME}", message)
    assert pod, message
    assert re.search(rf"peer {re.escape(ghost)} does not resolve after \d+s", message), message
    assert "step " not in pod_logs(kubectl, JOBS_NAMESPACE, pod.group(1))  # it never began training
