"""TrainingJobs applied with kubectl, run for real: operator -> pods -> process node -> the reference
trainers (trainers/phalanx_trainer/examples), with checkpoints on a hostPath-backed claim.

Tiny models and few steps; --step-sleep slows the steps down so kills and scale-ups land mid-run.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster.testing import Kubectl, create_namespace, unique_namespace_name
from procnode.testing import NodeProcess
from tests.e2e.conftest import make_claim, on_procnode
from tests.plugins.operator import GROUP, VERSION, JobClient, OperatorProcess

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 240.0  # generous: 2 cores, torch/TF imports
# The same job for the reference run and the killed run: the final params must match bit for bit.
DDP_ARGS = ["--steps", "60", "--batch-size", "16", "--seed", "7", "--checkpoint-every-steps", "10",
            "--step-sleep", "0.15", "--log-every", "10", "--out", "/checkpoints/final.pt"]  # fmt: skip


def training_job(
    name: str, claim: str, args: list[str], framework: str = "pytorch", replicas: int = 2,
    module: str = "phalanx_trainer.examples.pytorch_ddp", env: list[dict[str, str]] | None = None, **spec: Any,
) -> dict[str, Any]:  # fmt: skip
    container: dict[str, Any] = {
        "name": "trainer",
        "image": "phalanx-trainer:local",  # never pulled: the process node runs the command locally
        "command": ["python", "-m", module],
        "args": args,
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "framework": framework,
            "replicas": replicas,
            "template": {"spec": on_procnode({"containers": [container]})},
            "checkpoint": {"claimName": claim, "path": "/checkpoints", "keep": 3},
            "runPolicy": {"backoffLimit": 3},
            **spec,
        },
    }


def kubectl_apply(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def committed_steps(root: Path) -> list[int]:
    """Steps of the committed checkpoints in a claim dir (trainers' store layout: step-N/COMMITTED)."""
    steps = []
    for d in root.glob("step-*"):
        if (d / "COMMITTED").exists():
            steps.append(int(d.name.removeprefix("step-")))
    return sorted(steps)


def state(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("state"))


def wait_for(what: str, fn: Callable[[], Any], timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.3)


def trainer_pid(pod: client.V1Pod) -> int:
    """The pid of the pod's trainer, from the node's containerID; checked to be that pod's process."""
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("procnode://"))
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"PROCNODE_POD_IP={pod.status.pod_ip}".encode() in environ, f"pid {pid} is not {pod.metadata.name}"
    return pid


def job_events(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    """Messages of the Events on a TrainingJob (the operator records each condition change as one)."""
    out = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    items = yaml.safe_load(out)["items"]
    return [e.get("message", "") for e in items if e["involvedObject"].get("name") == name]


def load_params(path: Path) -> dict[str, Any]:
    import torch

    params: dict[str, Any] = torch.load(path, weights_only=True)
    return params


# --- the uninterrupted PyTorch run: completion, checkpoints, metrics, and the reference params ---------


@dataclass
class Reference:
    namespace: str
    job: dict[str, Any]
    claim_dir: Path
    pod_ips: dict[str, str] = field(default_factory=dict)
    scraped: dict[str, str] = field(default_factory=dict)  # pod -> a /metrics body read at its address
    throughput: list[dict[str, Any]] = field(default_factory=list)  # status.throughput values seen
    get_tj: str = ""  # `kubectl get tj` while the operator showed a throughput


@pytest.fixture(scope="module")
def ddp_reference(
    e2e_operator: OperatorProcess, procnode: NodeProcess, api_client: client.ApiClient, core_v1: client.CoreV1Api,
    kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Reference]:  # fmt: skip
    ns = create_namespace(core_v1, unique_namespace_name("e2e-ddp-reference"))
    claim_dir = tmp_path_factory.mktemp("reference") / "claim"
    pv = make_claim(kubectl, ns, "ckpt", claim_dir)
    jobs = JobClient(api_client, ns)
    kubectl_apply(kubectl, ns, training_job("ref", "ckpt", DDP_ARGS))
    ref = Reference(namespace=ns, job={}, claim_dir=claim_dir)
    deadline = time.monotonic() + JOB_TIMEOUT
    while state(job := jobs.get("ref")) not in ("Succeeded", "Failed") and time.monotonic() < deadline:
        # While it trains: read each rank's metrics at its pod address, and watch the operator's summary.
        for p in jobs.pods("ref"):
            if p.status.phase == "Running" and p.status.pod_ip and p.metadata.name not in ref.scraped:
                ref.pod_ips[p.metadata.name] = p.status.pod_ip
                try:
                    with urllib.request.urlopen(f"http://{p.status.pod_ip}:9400/metrics", timeout=2) as resp:
                        body = resp.read().decode()
                    if "phalanx_trainer_steps_total" in body:
                        ref.scraped[p.metadata.name] = body
                except OSError:
                    pass  # not serving yet
        throughput = (job.get("status") or {}).get("throughput") or {}
        if throughput.get("samplesPerSecond"):
            ref.throughput.append(throughput)
            if not ref.get_tj and throughput.get("scalingEfficiency") is not None:
                ref.get_tj = kubectl("get", "tj", "-n", ns, "ref").stdout
        time.sleep(0.3)
    ref.job = job
    yield ref
    core_v1.delete_namespace(ns)
    kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_pytorch_ddp_trains_to_completion(ddp_reference: Reference, procnode: NodeProcess) -> None:
    ref = ddp_reference
    assert state(ref.job) == "Succeeded", yaml.safe_dump(ref.job.get("status"))
    status = ref.job["status"]
    assert (status["attempt"], status["restarts"], status["worldSize"]) == (1, 0, 2)
    assert committed_steps(ref.claim_dir)[-1] == 60  # the final checkpoint, committed
    assert (ref.claim_dir / "final.pt").exists()
    log = procnode.pod_log(ref.namespace, "ref-a1-worker-0")
    assert re.search(r"^done step 60/60 loss [\d.]+ world 2 resumed_from -1", log, re.M), log


def test_trainer_metrics_are_served_at_the_pod_addresses(ddp_reference: Reference) -> None:
    ref = ddp_reference
    # Every rank served its metrics on its own 127.0.0.N:9400 (the same port: one address per pod).
    assert set(ref.scraped) == {"ref-a1-worker-0", "ref-a1-worker-1"}, ref.pod_ips
    assert len(set(ref.pod_ips.values())) == 2
    for body in ref.scraped.values():
        assert re.search(r"^phalanx_trainer_world_size 2\.0$", body, re.M)
    # The operator scraped the same endpoints: its throughput summary reached the status and `kubectl get tj`.
    assert ref.throughput, "the operator never reported a throughput for the job"
    assert all(t["samplesPerSecond"] > 0 for t in ref.throughput)
    assert ref.get_tj, "no scaling efficiency reached the status"
    header, row = ref.get_tj.splitlines()[:2]
    efficiency = row.split()[header.split().index("EFFICIENCY")]
    assert float(efficiency) > 0, ref.get_tj


# --- failures and elasticity -------------------------------------------------------------------------


def test_sigkilled_worker_restarts_the_gang_which_resumes_to_the_same_model(
    ddp_reference: Reference, e2e_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient,
    namespace: str, claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    """SIGKILL the trainer of worker 0 (rank 0: the rendezvous host and checkpoint writer) after
    its first committed checkpoint. Its peer then crashes on the broken collective with exit 1; the
    operator judges a gang by its first failure (finishedAt, a retryable cause winning ties), so the
    judgement stays on the real cause (137) (see docs/e2e.md)."""
    claim_dir = claim("ckpt")
    kubectl_apply(kubectl, namespace, training_job("killed", "ckpt", DDP_ARGS))
    wait_for("a committed checkpoint", lambda: committed_steps(claim_dir))
    victim = next(p for p in jobs.pods("killed") if p.metadata.name == "killed-a1-worker-0")
    pid = trainer_pid(victim)
    os.kill(pid, signal.SIGKILL)
    wait_for("the killed trainer to be gone", lambda: not Path(f"/proc/{pid}").exists(), timeout=30)
    last_committed = committed_steps(claim_dir)[-1]  # rank 0, the only writer, is dead: this is final
    assert last_committed < 60, "the kill landed after training ended; slow the job down"

    job = jobs.wait_state("killed", "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["restarts"]) == (2, 1), yaml.safe_dump(job["status"])
    events = job_events(kubectl, namespace, "killed")
    assert any("pod killed-a1-worker-0 exited with code 137" in e for e in events), events
    runs = [r for a in (1, 2) for r in procnode.pod_runs(namespace, f"killed-a{a}-worker-0")]  # a name per attempt
    assert [r.attempt for r in runs] == [1, 2]
    second = runs[1].log()
    assert f"resumed from step {last_committed} (attempt 2, world size 2 -> 2)" in second, second
    assert re.search(rf"^done step 60/60 .* world 2 resumed_from {last_committed} ", second, re.M), second

    reference, resumed = load_params(ddp_reference.claim_dir / "final.pt"), load_params(claim_dir / "final.pt")
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert reference[name].equal(resumed[name]), f"{name} differs from the uninterrupted run"


def test_scale_up_sigterms_saves_and_resumes_at_world_size_3(
    e2e_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim_dir = claim("ckpt")
    args = ["--steps", "60", "--batch-size", "16", "--checkpoint-every-steps", "10", "--step-sleep", "0.15",
            "--log-every", "10", "--out", "/checkpoints/final.pt"]  # fmt: skip
    manifest = training_job("elastic", "ckpt", args, elastic={"minReplicas": 1, "maxReplicas": 4})
    kubectl_apply(kubectl, namespace, manifest)
    wait_for("a committed checkpoint", lambda: committed_steps(claim_dir))
    kubectl("scale", "-n", namespace, "tj/elastic", "--replicas=3")

    job = jobs.wait_state("elastic", "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["worldSize"]) == (2, 3), yaml.safe_dump(job["status"])
    pods = jobs.pods("elastic")
    assert [p.metadata.name for p in pods] == [f"elastic-a2-worker-{i}" for i in range(3)]
    assert all(p.status.phase == "Succeeded" for p in pods)
    # Attempt 1: both ranks got SIGTERM, agreed on a step, saved it and exited 143.
    saved = set()
    for i in range(2):
        first = procnode.pod_runs(namespace, f"elastic-a1-worker-{i}")[0]
        assert first.attempt == 1
        m = re.search(r"preempted at step (\d+) \(checkpoint saved\); exiting 143", first.log())
        assert m, first.log()
        saved.add(int(m.group(1)))
    assert len(saved) == 1
    step = saved.pop()
    log = procnode.pod_log(namespace, "elastic-a2-worker-0")
    assert f"resumed from step {step} (attempt 2, world size 2 -> 3)" in log, log
    assert re.search(rf"^done step 60/60 .* world 3 resumed_from {step} ", log, re.M), log


def test_tensorflow_multiworker_mirrored_trains_to_completion(
    e2e_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim_dir = claim("ckpt")
    args = ["--mode", "fit", "--steps", "40", "--batch-size", "16", "--steps-per-epoch", "20",
            "--checkpoint-every-steps", "10", "--log-every", "10", "--out", "/checkpoints/final.npz"]  # fmt: skip
    env = [{"name": "TF_USE_LEGACY_KERAS", "value": "1"}, {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}]
    manifest = training_job("mwms", "ckpt", args, framework="tensorflow",
                            module="phalanx_trainer.examples.tensorflow_mwms", env=env)  # fmt: skip
    kubectl_apply(kubectl, namespace, manifest)
    job = jobs.wait_state("mwms", "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["worldSize"]) == (1, 2)
    assert committed_steps(claim_dir)[-1] == 40
    assert (claim_dir / "final.npz").exists()
    chief = procnode.pod_log(namespace, "mwms-a1-worker-0")
    assert re.search(r"^done step 40/40 .* world 2 ", chief, re.M), chief


def test_exit_code_1_fails_the_job_at_once_naming_pod_and_code(
    e2e_operator: OperatorProcess, procnode: NodeProcess, jobs: JobClient, namespace: str,
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    claim("ckpt")
    manifest = training_job("broken", "ckpt", ["-c", "import sys; print('giving up'); sys.exit(1)"])
    manifest["spec"]["template"]["spec"]["containers"][0]["command"] = ["python"]
    kubectl_apply(kubectl, namespace, manifest)
    job = jobs.wait_state("broken", "Failed", timeout=120)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    m = re.search(r"pod (broken-a\d+-worker-\d) exited with code 1\b", failed["message"])
    assert m, failed
    assert (job["status"]["restarts"], job["status"]["attempt"]) == (0, 1), yaml.safe_dump(job["status"])
    # The pod named is one that ran the command (its peer may have been stopped before it even started).
    assert "giving up" in procnode.pod_log(namespace, m.group(1))
