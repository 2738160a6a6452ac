"""`kubectl phalanx` on real trainer processes: the process node runs each rank (tests/e2e/conftest.py),
the operator runs as its own process and scrapes them, and a rank is SIGKILLed mid-run.

Checked: each rank's step, samples/s and last step through the API server's pod proxy; the
operator's throughput in status and top; `logs` interleaving both ranks with their prefixes; `logs -f`
following the job across the gang restart to its end; `logs --rank/--attempt`; the restart's cause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster.testing import Kubectl, wait_for
from procnode.testing import NodeProcess
from tests.cli.runner import REPO, cli, parsed
from tests.e2e.conftest import on_procnode
from tests.plugins.operator import GROUP, VERSION, JobClient, OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_operator")]

STEP_SECONDS, BATCH = 0.05, 8  # 160 samples/s per rank, as the trainer reports it
# A trainer that uses the real metrics runtime: attempt 1 trains until it is killed, attempt 2 runs
# STEPS steps and exits 0. Every 10th step is logged.
TRAINER = f"""
import os, time
from phalanx_trainer.metrics import TrainerMetrics
rank, attempt = int(os.environ["PHALANX_REPLICA_INDEX"]), int(os.environ["PHALANX_ATTEMPT"])
m = TrainerMetrics()
m.set_identity(world_size=int(os.environ["WORLD_SIZE"]), rank=rank, attempt=attempt, procs_per_pod=1)
m.serve(int(os.environ["PHALANX_METRICS_PORT"]))
step = 0
while attempt == 1 or step < int(os.environ["STEPS"]):
    time.sleep({STEP_SECONDS})
    step += 1
    m.observe_step({STEP_SECONDS}, {BATCH})
    if step % 10 == 0:
        print(f"attempt {{attempt}} step {{step}}", flush=True)
print(f"attempt {{attempt}} done", flush=True)
"""


def trainer_job(name: str) -> dict[str, Any]:
    container = {
        "name": "trainer",
        "image": "phalanx-trainer:local",  # never pulled: the process node runs the command locally
        "command": [sys.executable, "-c", TRAINER],
        "env": [{"name": "PYTHONPATH", "value": str(REPO / "trainers")}, {"name": "STEPS", "value": "60"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"framework": "pytorch", "replicas": 2, "template": {"spec": on_procnode({"containers": [container]})}},
    }


def trainer_lines(lines: list[str]) -> list[str]:
    """Without the notes the process node itself writes into a pod's log (volumes it does not mount)."""
    return [line for line in lines if not line.split("] ", 1)[-1].startswith("procnode:")]


def trainer_pid(pod: client.V1Pod) -> int:
    """The trainer's pid from the node's containerID, checked to be that pod's process."""
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("procnode://"))
    assert f"PROCNODE_POD_IP={pod.status.pod_ip}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return pid


class Follow:
    """`kubectl phalanx logs -f` in the background, its lines collected as they come."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        env = {"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.cli", "logs", name, "-f", "--kubeconfig", str(kubeconfig), "-n", namespace],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"logs -f did not end with the job; it printed: {self.lines[-20:]}") from None
        self._reader.join(10)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def test_ranks_logs_and_a_restart_on_real_trainers(
    kubeconfig: Path,
    namespace: str,
    jobs: JobClient,
    kubectl: Kubectl,
    procnode: NodeProcess,
    e2e_operator: OperatorProcess,
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(trainer_job("tr")))

    def ranks_reporting() -> dict[str, Any] | None:
        report = parsed(cli("status", "tr", "-o", "json", kubeconfig=kubeconfig, namespace=namespace))
        ranks = report["ranks"]
        ok = len(ranks) == 2 and all(r["metrics"] == "ok" and (r["step"] or 0) >= 10 for r in ranks)
        return report if ok else None

    report = wait_for(ranks_reporting, timeout=120, interval=1, what="both ranks serving metrics")
    pods = {p.metadata.name: p for p in jobs.pods("tr")}
    for r in report["ranks"]:
        pod = pods[r["pod"]]
        assert r["ranks"] == pod.metadata.labels["phalanx.dev/replica-index"] and r["node"] == procnode.name
        assert r["phase"] == "Running" and r["samplesPerSecond"] == pytest.approx(BATCH / STEP_SECONDS)
        assert r["lastStepSeconds"] is not None and r["lastStepSeconds"] >= 0
    # The operator's own summary from its scrapes (every second here) reaches status, then the CLI.
    job = jobs.wait(
        "tr",
        lambda j: ((j["status"].get("throughput") or {}).get("samplesPerSecond") or 0) > 0,
        timeout=120,
        what="the operator's throughput",
    )
    report = parsed(cli("status", "tr", "-o", "json", kubeconfig=kubeconfig, namespace=namespace))
    t = job["status"]["throughput"]
    if report["throughput"]["samplesPerSecond"] == t["samplesPerSecond"]:  # unless a scrape moved it in between
        assert report["throughput"]["scalingEfficiency"] == t.get("scalingEfficiency")
    assert report["throughput"]["samplesPerSecond"] > 0
    [row] = parsed(cli("top", "-o", "json", kubeconfig=kubeconfig, namespace=namespace))
    assert row["name"] == "tr" and row["samplesPerSecond"] > 0

    logged = cli("logs", "tr", kubeconfig=kubeconfig, namespace=namespace)
    assert logged.returncode == 0, logged.stderr
    assert "[rank 0] attempt 1 step 10" in logged.stdout.splitlines()
    assert "[rank 1] attempt 1 step 10" in logged.stdout.splitlines()
    only = trainer_lines(
        cli("logs", "tr", "--rank", "1", kubeconfig=kubeconfig, namespace=namespace).stdout.splitlines()
    )
    assert only and all(line.startswith("[rank 1] attempt 1 step ") for line in only)
    res = cli("logs", "tr", "--rank", "2", kubeconfig=kubeconfig, namespace=namespace)
    assert res.returncode == 1 and res.stderr == "error: --rank 2: job tr has ranks 0..1\n"

    follow = Follow(kubeconfig, namespace, "tr")
    wait_for(
        lambda: any(line.startswith("[rank 1] attempt 1 step") for line in follow.lines),
        timeout=60,
        what="logs -f streaming rank 1",
    )
    os.kill(trainer_pid(pods["tr-a1-worker-1"]), signal.SIGKILL)
    job = jobs.wait_state("tr", "Succeeded", timeout=180)
    code, err = follow.wait(timeout=60)
    assert code == 0, err
    lines = trainer_lines(follow.lines)
    marker = next(i for i, line in enumerate(lines) if line.startswith("--- attempt 2"))
    assert "(GangRestart: pod tr-a1-worker-1 exited with code 137" in lines[marker]
    assert all("attempt 1" in line for line in lines[:marker])
    after = lines[marker + 1 :]
    assert {"[rank 0] attempt 2 done", "[rank 1] attempt 2 done"} <= set(after)
    assert all(line.startswith(("[rank 0] attempt 2", "[rank 1] attempt 2")) for line in after)

    report = parsed(cli("status", "tr", "-o", "json", kubeconfig=kubeconfig, namespace=namespace))
    assert (report["state"], report["attempt"], report["restarts"]) == ("Succeeded", 2, 1)
    [restart] = report["restartHistory"]
    assert restart["attempt"] == 2 and restart["message"].startswith("pod tr-a1-worker-1 exited with code 137")
    assert report["ended"]["reason"] == "AllReplicasSucceeded"
    res = cli("logs", "tr", "--attempt", "1", kubeconfig=kubeconfig, namespace=namespace)
    assert res.returncode == 1 and "no pod of attempt 1 of job tr exists any more" in res.stderr
    second = trainer_lines(
        cli("logs", "tr", "--attempt", "2", kubeconfig=kubeconfig, namespace=namespace).stdout.splitlines()
    )
    # The process node gives no timestamps, so the ranks come one after the other, in rank order.
    assert second.index("[rank 0] attempt 2 done") < second.index("[rank 1] attempt 2 step 10")
    assert second[-1] == "[rank 1] attempt 2 done"
