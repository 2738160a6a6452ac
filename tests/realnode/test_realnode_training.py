"""TrainingJobs in real containers: the chart's operator in-cluster, the trainer images of `make
images` on the real node, rendezvous over the pod network, checkpoints on a hostPath claim.

The training suite: it ran on the process node before, and runs here with real kubelet semantics:
images, users, cgroups, pod IPs on a bridge, cluster DNS for MASTER_ADDR, `kubectl logs`, SIGKILL of a
container's process from the host.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import images, realnode
from localcluster.testing import Kubectl
from tests.plugins.operator import JobClient
from tests.realnode.conftest import (
    JOB_TIMEOUT,
    JOBS_NAMESPACE,
    TENSORFLOW_IMAGE,
    RealNode,
    apply,
    drop_claim,
    new_claim,
    pod_logs,
    training_job,
    unique,
    wait_for,
)  # fmt: skip
from tests.realnode.training import DDP_ARGS, committed_steps, job_events, load_params

pytestmark = pytest.mark.realnode


@dataclass
class Reference:
    """The uninterrupted DDP run that the restarted runs must match bit for bit."""

    name: str
    claim_dir: Path
    job: dict[str, Any]
    scraped: dict[str, str]  # pod -> "<pod IP>\n<a /metrics body read there>"
    efficiency: list[float]  # status.throughput.scalingEfficiency values seen while it ran


@pytest.fixture(scope="module")
def ddp_reference(
    api_client: client.ApiClient, phalanx_release: str, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reference]:
    """The reference run: rendezvous via MASTER_ADDR from cluster DNS, metrics read at the pods' real IPs."""
    jobs = JobClient(api_client, JOBS_NAMESPACE)
    ref = unique("ref")
    claim_name, claim_dir, pv = new_claim(kubectl, tmp_path_factory.mktemp("reference"), "ref")
    apply(kubectl, training_job(ref, claim_name, DDP_ARGS))
    scraped: dict[str, str] = {}
    efficiency: list[float] = []
    deadline = time.monotonic() + JOB_TIMEOUT
    while (jobs.get(ref).get("status") or {}).get("state") not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, f"{ref} did not finish: {yaml.safe_dump(jobs.get(ref).get('status'))}"
        for p in jobs.pods(ref):
            if p.status.phase == "Running" and p.status.pod_ip and p.metadata.name not in scraped:
                try:
                    with urllib.request.urlopen(f"http://{p.status.pod_ip}:9400/metrics", timeout=2) as resp:
                        body = resp.read().decode()
                    if "phalanx_trainer_steps_total" in body:
                        scraped[p.metadata.name] = f"{p.status.pod_ip}\n{body}"
                except OSError:
                    pass  # not serving yet
        throughput = (jobs.get(ref).get("status") or {}).get("throughput") or {}
        if throughput.get("scalingEfficiency") is not None:
            efficiency.append(float(throughput["scalingEfficiency"]))
        time.sleep(0.5)
    yield Reference(ref, claim_dir, jobs.get(ref), scraped, efficiency)
    kubectl("delete", "tj", "-n", JOBS_NAMESPACE, ref, "--wait=false", check=False)
    drop_claim(kubectl, pv)


def assert_same_model(reference: Reference, claim_dir: Path) -> None:
    expected, resumed = load_params(reference.claim_dir / "final.pt"), load_params(claim_dir / "final.pt")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert expected[name].equal(resumed[name]), f"{name} differs from the uninterrupted run"


def test_pytorch_ddp_trains_in_real_containers_with_metrics_at_the_pod_ips(
    ddp_reference: Reference, kubectl: Kubectl
) -> None:
    ref, job = ddp_reference.name, ddp_reference.job
    assert job["status"]["state"] == "Succeeded", yaml.safe_dump(job["status"])
    assert (job["status"]["attempt"], job["status"]["restarts"], job["status"]["worldSize"]) == (1, 0, 2)
    assert committed_steps(ddp_reference.claim_dir)[-1] == 60
    # Each rank served metrics on its own pod IP on the bridge, and the in-cluster operator scraped them.
    scraped = ddp_reference.scraped
    assert set(scraped) == {f"{ref}-a1-worker-0", f"{ref}-a1-worker-1"}, scraped.keys()
    ips = {body.split("\n", 1)[0] for body in scraped.values()}
    assert len(ips) == 2 and all(ip.startswith("10.244.0.") for ip in ips), ips
    assert all(re.search(r"^phalanx_trainer_world_size 2\.0$", body, re.M) for body in scraped.values()), scraped
    efficiency = ddp_reference.efficiency
    assert efficiency and all(e > 0 for e in efficiency), "no scaling efficiency reached the status"
    # `kubectl logs` reaches each rank's container through the kubelet (rank 1 prints nothing itself).
    log = pod_logs(kubectl, JOBS_NAMESPACE, f"{ref}-a1-worker-0")
    assert re.search(r"^done step 60/60 loss [\d.]+ world 2 resumed_from -1", log, re.M), log
    pod_logs(kubectl, JOBS_NAMESPACE, f"{ref}-a1-worker-1")


def test_a_killed_rank_restarts_the_gang_which_resumes_to_the_same_model(
    ddp_reference: Reference, node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]],
    kubectl: Kubectl,
) -> None:  # fmt: skip
    """Rank 0's process SIGKILLed after its first checkpoint: the whole gang is recreated as attempt 2,
    resumes, and ends with the reference's parameters bit for bit."""
    killed, (killed_claim, killed_dir) = unique("killed"), claim("killed")
    apply(kubectl, training_job(killed, killed_claim, DDP_ARGS))
    wait_for("a committed checkpoint", lambda: committed_steps(killed_dir), timeout=JOB_TIMEOUT)
    victim = next(p for p in jobs.pods(killed) if p.metadata.name == f"{killed}-a1-worker-0")
    node.kill_container(victim)
    last = committed_steps(killed_dir)[-1]
    assert last < 60, "the kill landed after training ended; slow the job down"
    job = jobs.wait_state(killed, "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["restarts"]) == (2, 1), yaml.safe_dump(job["status"])
    events = job_events(kubectl, JOBS_NAMESPACE, killed)
    assert any(f"pod {killed}-a1-worker-0 exited with code 137" in e for e in events), events
    log = pod_logs(kubectl, JOBS_NAMESPACE, f"{killed}-a2-worker-0")
    m = re.search(r"resumed from step (\d+) \(attempt 2, world size 2 -> 2\)", log)
    assert m and int(m.group(1)) >= last, log
    assert_same_model(ddp_reference, killed_dir)


def test_in_place_the_killed_rank_restarts_every_container_of_the_gang_where_it_runs(
    ddp_reference: Reference, node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]],
    kubectl: Kubectl,
) -> None:  # fmt: skip
    """restartMode InPlace: the same kill restarts the containers of both pods in place (RestartAllContainers):
    the same pods (UIDs, names, IPs) run attempt 2, resume from the last checkpoint, and end with the
    reference's parameters bit for bit."""
    name, (claim_name, claim_dir) = unique("inplace"), claim("inplace")
    manifest = training_job(name, claim_name, DDP_ARGS)
    manifest["spec"]["runPolicy"]["restartMode"] = "InPlace"
    apply(kubectl, manifest)
    wait_for("a committed checkpoint", lambda: committed_steps(claim_dir), timeout=JOB_TIMEOUT)
    before = {p.metadata.name: (p.metadata.uid, p.status.pod_ip) for p in jobs.pods(name)}
    assert sorted(before) == [f"{name}-a1-worker-0", f"{name}-a1-worker-1"], before
    node.kill_container(next(p for p in jobs.pods(name) if p.metadata.name == f"{name}-a1-worker-0"))
    last = committed_steps(claim_dir)[-1]
    assert last < 60, "the kill landed after training ended; slow the job down"
    job = jobs.wait_state(name, "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["restarts"]) == (2, 1), yaml.safe_dump(job["status"])
    after = {p.metadata.name: (p.metadata.uid, p.status.pod_ip) for p in jobs.pods(name)}
    assert after == before, "pods were recreated instead of restarted in place"
    for p in jobs.pods(name):
        assert p.metadata.labels["phalanx.dev/attempt"] == "2"
        (trainer,) = [c for c in p.status.container_statuses if c.name == "trainer"]
        assert trainer.restart_count >= 1, trainer
    events = job_events(kubectl, JOBS_NAMESPACE, name)
    assert any(f"pod {name}-a1-worker-0 exited with code 137" in e for e in events), events
    log = pod_logs(kubectl, JOBS_NAMESPACE, f"{name}-a1-worker-0")
    m = re.search(r"resumed from step (\d+) \(attempt 2, world size 2 -> 2\)", log)
    assert m and int(m.group(1)) >= last, log
    assert_same_model(ddp_reference, claim_dir)


def test_scale_up_sigterms_saves_and_resumes_at_world_size_3(
    node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]], kubectl: Kubectl
) -> None:
    name, (claim_name, claim_dir) = unique("elastic"), claim("elastic")
    args = ["--steps", "60", "--batch-size", "16", "--checkpoint-every-steps", "10", "--step-sleep", "0.15",
            "--log-every", "10", "--out", "/checkpoints/final.pt"]  # fmt: skip
    apply(kubectl, training_job(name, claim_name, args, elastic={"minReplicas": 1, "maxReplicas": 4}))
    wait_for("a committed checkpoint", lambda: committed_steps(claim_dir), timeout=JOB_TIMEOUT)
    kubectl("scale", "-n", JOBS_NAMESPACE, f"tj/{name}", "--replicas=3")
    job = jobs.wait_state(name, "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["worldSize"]) == (2, 3), yaml.safe_dump(job["status"])
    log = pod_logs(kubectl, JOBS_NAMESPACE, f"{name}-a2-worker-0")
    m = re.search(r"resumed from step (\d+) \(attempt 2, world size 2 -> 3\)", log)
    assert m, log
    # Resumed from the checkpoint both ranks saved on SIGTERM mid-run, not from scratch.
    assert 0 < int(m.group(1)) < 60, log
    assert re.search(rf"^done step 60/60 .* world 3 resumed_from {m.group(1)} ", log, re.M), log


def test_tensorflow_multiworker_mirrored_trains_in_real_containers(
    node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]], kubectl: Kubectl
) -> None:
    name, (claim_name, claim_dir) = unique("mwms"), claim("mwms")
    args = ["--mode", "fit", "--steps", "40", "--batch-size", "16", "--steps-per-epoch", "20",
            "--checkpoint-every-steps", "10", "--log-every", "10", "--out", "/checkpoints/final.npz"]  # fmt: skip
    env = [{"name": "TF_USE_LEGACY_KERAS", "value": "1"}, {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}]
    apply(kubectl, training_job(name, claim_name, args, framework="tensorflow", image=TENSORFLOW_IMAGE,
                                module="phalanx_trainer.examples.tensorflow_mwms", env=env))  # fmt: skip
    job = jobs.wait_state(name, "Succeeded", timeout=JOB_TIMEOUT)
    assert (job["status"]["attempt"], job["status"]["worldSize"]) == (1, 2)
    assert committed_steps(claim_dir)[-1] == 40
    chief = pod_logs(kubectl, JOBS_NAMESPACE, f"{name}-a1-worker-0")
    assert re.search(r"^done step 40/40 .* world 2 ", chief, re.M), chief


def test_a_non_retryable_exit_fails_the_job_naming_pod_and_code(
    node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]], kubectl: Kubectl
) -> None:
    name, (claim_name, _) = unique("broken"), claim("broken")
    manifest = training_job(name, claim_name, ["-c", "import sys; print('giving up'); sys.exit(1)"])
    manifest["spec"]["template"]["spec"]["containers"][0]["command"] = ["python"]
    apply(kubectl, manifest)
    job = jobs.wait_state(name, "Failed", timeout=JOB_TIMEOUT)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    m = re.search(rf"pod ({name}-a\d+-worker-\d) exited with code 1\b", failed["message"])
    assert m, failed
    assert (job["status"]["restarts"], job["status"]["attempt"]) == (0, 1), yaml.safe_dump(job["status"])
    assert "giving up" in pod_logs(kubectl, JOBS_NAMESPACE, m.group(1))


def test_an_oom_killed_rank_is_named_as_the_cause(
    node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]], kubectl: Kubectl
) -> None:
    name, (claim_name, _) = unique("oom"), claim("oom")
    hog = "import time; time.sleep(1); b = bytearray(512 * 1024 * 1024)"
    manifest = training_job(name, claim_name, ["-c", hog], runPolicy={"backoffLimit": 0})
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["command"], container["resources"] = (
        ["python"],
        {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}},
    )
    apply(kubectl, manifest)
    job = jobs.wait_state(name, "Failed", timeout=JOB_TIMEOUT)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert re.search(rf"pod {name}-a\d+-worker-\d exited with code 137 \(OOMKilled\)", failed["message"]), failed


def test_a_root_image_under_run_as_non_root_shows_the_kubelets_refusal_in_the_status(
    node: RealNode, jobs: JobClient, claim: Callable[[str], tuple[str, Path]], kubectl: Kubectl
) -> None:
    name, (claim_name, _) = unique("root"), claim("root")
    assert realnode.load_image(node.paths, images.base_ref(), log=print)
    apply(kubectl, training_job(name, claim_name, [], image=images.base_ref()))
    job = jobs.wait(
        name, lambda j: "runAsNonRoot" in yaml.safe_dump((j.get("status") or {}).get("conditions")),
        timeout=120, what="the refusal in a condition",
    )  # fmt: skip
    text = yaml.safe_dump(job["status"]["conditions"])
    assert "CreateContainerConfigError" in text and "image will run as root" in text, text
