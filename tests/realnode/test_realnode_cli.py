"""`kubectl phalanx` on real trainers in real containers: the chart's operator in-cluster scrapes each
rank at its pod IP, the kubelet serves the logs, and a rank's container is SIGKILLed from the host.

Checked: each rank's step, samples/s and last step through the API server's pod proxy; the
operator's throughput in status and top; `logs` merging both ranks by the kubelet's timestamps; `logs
-f` following the job across the gang restart to its end; `logs --rank/--attempt`; the restart's cause.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import realnode
from localcluster.testing import Kubectl, wait_for
from phalanx.cli.logs import split_stamp
from tests.cli.runner import REPO, cli, parsed
from tests.plugins.operator import GROUP, VERSION, JobClient
from tests.realnode.conftest import JOBS_NAMESPACE, PYTORCH_IMAGE, RealNode, on_realnode, unique

pytestmark = pytest.mark.realnode

STEP_SECONDS, BATCH = 0.05, 8  # 160 samples/s per rank, as the trainer reports it
# A trainer that uses the real metrics runtime: attempt 1 trains until it is killed, attempt 2 runs
# STEPS steps (10 s: the ranks' lines overlap in time) and exits 0. Every 10th step is logged.
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
STEPS = 200


def trainer_job(name: str) -> dict[str, Any]:
    container = {
        "name": "trainer",
        "image": PYTORCH_IMAGE,  # the trainer image holds phalanx_trainer
        "imagePullPolicy": "Never",
        "command": ["python", "-c", TRAINER],
        "env": [{"name": "STEPS", "value": str(STEPS)}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": JOBS_NAMESPACE},
        "spec": {"framework": "pytorch", "replicas": 2, "template": {"spec": on_realnode({"containers": [container]})}},
    }


def phalanx(*args: str, kubeconfig: Path) -> Any:
    """The CLI, allowed to reach the real node's pod addresses (through the API server's pod proxy)."""
    return cli(*args, kubeconfig=kubeconfig, namespace=JOBS_NAMESPACE, networks=realnode.POD_SUBNET)


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
    kubeconfig: Path, jobs: JobClient, kubectl: Kubectl, node: RealNode
) -> None:
    name = unique("tr")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(trainer_job(name)))

    def ranks_reporting() -> dict[str, Any] | None:
        report = parsed(phalanx("status", name, "-o", "json", kubeconfig=kubeconfig))
        ranks = report["ranks"]
        ok = len(ranks) == 2 and all(r["metrics"] == "ok" and (r["step"] or 0) >= 10 for r in ranks)
        return report if ok else None

    report = wait_for(ranks_reporting, timeout=180, interval=1, what="both ranks serving metrics")
    pods = {p.metadata.name: p for p in jobs.pods(name)}
    for r in report["ranks"]:
        pod = pods[r["pod"]]
        assert r["ranks"] == pod.metadata.labels["phalanx.dev/replica-index"] and r["node"] == realnode.NODE_NAME
        assert r["phase"] == "Running" and r["samplesPerSecond"] == pytest.approx(BATCH / STEP_SECONDS)
        assert r["lastStepSeconds"] is not None and r["lastStepSeconds"] >= 0
    # The operator's own summary from its scrapes (every second here) reaches status, then the CLI.
    job = jobs.wait(
        name,
        lambda j: ((j["status"].get("throughput") or {}).get("samplesPerSecond") or 0) > 0,
        timeout=120,
        what="the operator's throughput",
    )
    report = parsed(phalanx("status", name, "-o", "json", kubeconfig=kubeconfig))
    t = job["status"]["throughput"]
    if report["throughput"]["samplesPerSecond"] == t["samplesPerSecond"]:  # unless a scrape moved it in between
        assert report["throughput"]["scalingEfficiency"] == t.get("scalingEfficiency")
    assert report["throughput"]["samplesPerSecond"] > 0
    [row] = [r for r in parsed(phalanx("top", "-o", "json", kubeconfig=kubeconfig)) if r["name"] == name]
    assert row["samplesPerSecond"] > 0

    logged = phalanx("logs", name, kubeconfig=kubeconfig)
    assert logged.returncode == 0, logged.stderr
    assert "[rank 0] attempt 1 step 10" in logged.stdout.splitlines()
    assert "[rank 1] attempt 1 step 10" in logged.stdout.splitlines()
    only = phalanx("logs", name, "--rank", "1", kubeconfig=kubeconfig).stdout.splitlines()
    assert only and all(line.startswith("[rank 1] attempt 1 step ") for line in only)
    res = phalanx("logs", name, "--rank", "2", kubeconfig=kubeconfig)
    assert res.returncode == 1 and res.stderr == f"error: --rank 2: job {name} has ranks 0..1\n"

    follow = Follow(kubeconfig, JOBS_NAMESPACE, name)
    wait_for(
        lambda: any(line.startswith("[rank 1] attempt 1 step") for line in follow.lines),
        timeout=60,
        what="logs -f streaming rank 1",
    )
    node.kill_container(pods[f"{name}-a1-worker-1"])
    job = jobs.wait_state(name, "Succeeded", timeout=240)
    code, err = follow.wait(timeout=60)
    assert code == 0, err
    lines = follow.lines
    marker = next(i for i, line in enumerate(lines) if line.startswith("--- attempt 2"))
    assert f"(GangRestart: pod {name}-a1-worker-1 exited with code 137" in lines[marker], lines[marker]
    assert all("attempt 1" in line for line in lines[:marker])
    after = lines[marker + 1 :]
    assert {"[rank 0] attempt 2 done", "[rank 1] attempt 2 done"} <= set(after)
    assert all(line.startswith(("[rank 0] attempt 2", "[rank 1] attempt 2")) for line in after)

    report = parsed(phalanx("status", name, "-o", "json", kubeconfig=kubeconfig))
    assert (report["state"], report["attempt"], report["restarts"]) == ("Succeeded", 2, 1)
    [restart] = report["restartHistory"]
    assert restart["attempt"] == 2 and restart["message"].startswith(f"pod {name}-a1-worker-1 exited with code 137")
    assert report["ended"]["reason"] == "AllReplicasSucceeded"
    res = phalanx("logs", name, "--attempt", "1", kubeconfig=kubeconfig)
    assert res.returncode == 1 and f"no pod of attempt 1 of job {name} exists any more" in res.stderr
    # The kubelet stamps every line: both ranks' lines are merged in time order, so they interleave
    # (each rank logs every 0.5 s for 10 s) instead of coming rank after rank.
    stamped = phalanx("logs", name, "--attempt", "2", "--timestamps", kubeconfig=kubeconfig).stdout.splitlines()
    merged = [(prefix + "]", split_stamp(rest)) for prefix, rest in (line.split("] ", 1) for line in stamped)]
    stamps = [stamp for _, (stamp, _) in merged]
    assert None not in stamps and stamps == sorted(stamps), stamped  # type: ignore[type-var]
    second = [f"{prefix} {text}" for prefix, (_, text) in merged]
    assert second.index("[rank 1] attempt 2 step 10") < second.index("[rank 0] attempt 2 done"), second
    assert second.index("[rank 0] attempt 2 step 10") < second.index("[rank 1] attempt 2 done"), second
