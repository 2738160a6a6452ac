"""`kubectl phalanx` against the real control plane and the real operator (kwok runs the pods).

Each subcommand's output is checked field by field against the objects the apiserver holds, for a
running, a waiting (queued for GPUs), a restarted, a failed and a finished job. kwok pods run no
trainer, so the throughput summary the operator would scrape is written through the status
subresource, the way the operator writes it; tests/realnode/test_realnode_cli.py covers real trainers.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import sim
from phalanx_trainer.metrics import TrainerMetrics
from tests.cli.runner import cli, parsed
from tests.plugins.operator import GROUP, PLURAL, VERSION, JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")
KUBEFLOW = Path(__file__).parent / "kubeflow"


def kp(kubeconfig: Path, *args: str, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    return cli(*args, kubeconfig=kubeconfig, namespace=namespace)


def running(n: int, attempt: int = 1) -> Any:
    def check(pods: list[Any]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(live) == n and all(
            p.status.phase == "Running" and p.metadata.labels["phalanx.dev/attempt"] == str(attempt) for p in live
        )

    return check


def write_status(jobs: JobClient, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Merge `status` into the job's status through the status subresource (as the operator writes)."""
    jobs.custom.patch_namespaced_custom_object_status(GROUP, VERSION, jobs.ns, PLURAL, name, {"status": status})
    return jobs.wait(name, lambda j: all(j["status"].get(k) == v for k, v in status.items()), what="status written")


THROUGHPUT = {
    "samplesPerSecond": 1520.0,
    "scalingEfficiency": 0.95,
    "baselineSamplesPerSecond": 800.0,
    "baselineReplicas": 1,
    "goodput": 0.8,
    "sizes": [
        {"replicas": 1, "worldSize": 1, "samplesPerSecond": 800.0},
        {"replicas": 2, "worldSize": 2, "samplesPerSecond": 1520.0},
    ],
}


def check_common(report: dict[str, Any], job: dict[str, Any]) -> None:
    """The fields every report copies from the job as the apiserver holds it."""
    s = job["status"]
    assert (report["name"], report["namespace"]) == (job["metadata"]["name"], job["metadata"]["namespace"])
    assert report["state"] == s["state"] and report["attempt"] == s["attempt"]
    assert report["restarts"] == s.get("restarts", 0) and report["ready"] == s.get("readySummary")
    assert report["created"] == job["metadata"]["creationTimestamp"]
    assert report["startTime"] == s.get("startTime") and report["completionTime"] == s.get("completionTime")
    assert [(c["type"], c["status"], c["reason"], c["message"]) for c in report["conditions"]] == [
        (c["type"], c["status"], c["reason"], c.get("message", "")) for c in s["conditions"]
    ]


def check_ranks(report: dict[str, Any], pods: list[client.V1Pod], attempt: int, procs: int = 1) -> None:
    """One row per pod of `attempt`, with its global ranks (index x procs per pod ...), phase and node."""
    current = sorted(
        (p for p in pods if p.metadata.labels["phalanx.dev/attempt"] == str(attempt)), key=lambda p: p.metadata.name
    )
    ranks = [int(p.metadata.labels["phalanx.dev/replica-index"]) * procs for p in current]
    assert [(r["pod"], r["ranks"], r["phase"], r["node"]) for r in report["ranks"]] == [
        (
            p.metadata.name,
            str(first) if procs == 1 else f"{first}-{first + procs - 1}",
            p.status.phase,
            p.spec.node_name,
        )
        for p, first in zip(current, ranks, strict=True)
    ]


def host_address() -> str:
    """An address of this machine that is not loopback: the API server proxies to it (never to 127/8)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    found = [line.split()[3].split("/")[0] for line in out.stdout.splitlines() if len(line.split()) > 3]
    if not found:
        pytest.fail("this machine has no non-loopback IPv4 address for the pod-proxy test (ip -4 addr)")
    return found[0]


def test_rank_metrics_come_through_the_api_servers_pod_proxy(jobs: JobClient, kubeconfig: Path, namespace: str) -> None:
    """A kwok pod whose address is this machine's, where a real trainer metrics endpoint serves: the
    CLI reads it through the API server's pod proxy (the path it takes on every real cluster)."""
    ip = host_address()
    with socket.socket() as s:
        s.bind((ip, 0))
        port = s.getsockname()[1]
    m = TrainerMetrics()
    m.set_identity(world_size=1, rank=0, attempt=1, procs_per_pod=1)
    for _ in range(7):
        m.observe_step(0.1, 4)
    m.set_resumed_from(100)
    m.serve(port, addr=ip)
    jobs.create(job_manifest("px", replicas=1, metrics={"port": port}))
    jobs.wait_pods("px", running(1))
    jobs.core.patch_namespaced_pod_status("px-a1-worker-0", namespace, [
        {"op": "replace", "path": "/status/podIP", "value": ip},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]},
    ])  # fmt: skip
    # Outside PHALANX_SCRAPE_NETWORKS the pod is not contacted at all.
    [row] = parsed(kp(kubeconfig, "status", "px", "-o", "json", namespace=namespace))["ranks"]
    assert row["metrics"] == "skipped"
    res = cli("status", "px", "-o", "json", kubeconfig=kubeconfig, namespace=namespace, networks=f"{ip}/32")
    [row] = parsed(res)["ranks"]
    assert (row["pod"], row["metrics"], row["step"]) == ("px-a1-worker-0", "ok", 107)  # resumed at 100, 7 steps since
    assert row["samplesPerSecond"] == pytest.approx(40.0) and row["lastStepSeconds"] is not None


def test_running_job_status_top_and_plot(jobs: JobClient, kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    jobs.create(job_manifest("run", replicas=2))
    jobs.wait_pods("run", running(2))
    jobs.wait_state("run", "Running")
    job = write_status(
        jobs, "run", {"throughput": THROUGHPUT, "lastCheckpoint": {"step": 300, "time": "2026-01-01T00:00:00Z"}}
    )

    report = parsed(kp(kubeconfig, "status", "run", "-o", "json", namespace=namespace))
    check_common(report, job)
    assert (report["state"], report["attempt"], report["restarts"], report["ready"]) == ("Running", 1, 0, "2/2")
    assert (report["framework"], report["strategy"], report["replicas"], report["worldSize"]) == (
        "pytorch",
        "ddp",
        2,
        2,
    )
    assert report["waiting"] is None and report["ended"] is None and report["restartHistory"] == []
    assert report["lastCheckpoint"]["step"] == 300 and report["lastCheckpoint"]["time"] == "2026-01-01T00:00:00Z"
    assert report["throughput"] == {k: v for k, v in THROUGHPUT.items() if k != "sizes"} | {"baselineDeclared": False}
    check_ranks(report, jobs.pods("run"), 1)
    # kwok's pod addresses are made up and outside PHALANX_SCRAPE_NETWORKS: never contacted.
    assert [r["metrics"] for r in report["ranks"]] == ["skipped", "skipped"]

    text = kp(kubeconfig, "status", "run", namespace=namespace).stdout
    assert "State:       Running   attempt 1, 0 restarts of backoffLimit 3" in text
    assert "Throughput:  1520 samples/s   efficiency 0.950 (X(1) 800 samples/s per pod, measured at 1 pod)" in text
    assert "Checkpoint:  step 300," in text and "not read" in text

    [row] = parsed(kp(kubeconfig, "top", "-o", "yaml", namespace=namespace))
    assert row["name"] == "run" and row["namespace"] == namespace and row["state"] == "Running"
    assert (row["samplesPerSecond"], row["scalingEfficiency"], row["goodput"]) == (1520.0, 0.95, 0.8)
    assert (row["gpus"], row["restarts"], row["replicas"], row["worldSize"]) == (0, 0, "2/2", 2)
    table = kp(kubeconfig, "top", namespace=namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "STATE",
        "REPLICAS",
        "SAMPLES/S",
        "EFFICIENCY",
        "GOODPUT",
        "GPUS",
        "RESTARTS",
        "AGE",
    ]
    assert table[1].split()[:8] == ["run", "Running", "2/2", "1520", "0.950", "0.80", "0", "0"]
    everywhere = kp(kubeconfig, "top", "-A").stdout.splitlines()
    assert everywhere[0].startswith("NAMESPACE ") and any(line.split()[:2] == [namespace, "run"] for line in everywhere)

    png = tmp_path / "scaling.png"
    res = kp(kubeconfig, "plot", "run", "-o", str(png), namespace=namespace)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert res.returncode == 1 and res.stderr.startswith(
            "error: plot needs matplotlib: pip install 'phalanx[plot]'"
        )
    else:
        assert res.returncode == 0, res.stderr
        assert res.stderr == f"wrote {png}: 2 world sizes (1, 2)\n"
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (800, 450)

    # One size only: refused, whatever matplotlib.
    write_status(jobs, "run", {"throughput": {**THROUGHPUT, "sizes": THROUGHPUT["sizes"][1:]}})
    res = kp(kubeconfig, "plot", "run", "-o", str(tmp_path / "one.png"), namespace=namespace)
    assert res.returncode == 1 and not (tmp_path / "one.png").exists()
    assert res.stderr == (
        f"error: job {namespace}/run has throughput at one size only (2 pods, world size 2): a scaling plot needs two "
        "or more. Run it at another size (kubectl scale tj/NAME --replicas=N) or declare "
        "spec.metrics.baselineSamplesPerSecond\n"
    )


@pytest.fixture
def free_gpus(core_v1: client.CoreV1Api, api_client: client.ApiClient, namespace: str) -> Iterator[None]:
    """After the test its GPU pods go at once, so later tests see every GPU free."""
    yield
    client.CustomObjectsApi(api_client).delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    core_v1.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def test_waiting_job_says_why_with_the_operators_numbers(
    jobs: JobClient, kubeconfig: Path, namespace: str, free_gpus: None
) -> None:
    jobs.create(job_manifest("blocker", replicas=3, resources={"gpus": 8}))
    jobs.wait_state("blocker", "Running", timeout=120)
    jobs.create(job_manifest("waiter", replicas=2, resources={"gpus": 8}))
    job = jobs.wait(
        "waiter",
        lambda j: any(
            c["type"] == "Admitted" and c["reason"] == "InsufficientGPU"
            for c in (j.get("status") or {}).get("conditions", [])
        ),
        timeout=120,
        what="Admitted=False InsufficientGPU",
    )
    admitted = next(c for c in job["status"]["conditions"] if c["type"] == "Admitted")
    assert "needs 16 nvidia.com/gpu" in admitted["message"]

    report = parsed(kp(kubeconfig, "status", "waiter", "-o", "json", namespace=namespace))
    check_common(report, job)
    assert report["state"] == "Queued" and report["gpus"] == 16
    w = report["waiting"]
    assert (w["state"], w["type"], w["status"], w["reason"]) == ("Queued", "Admitted", "False", "InsufficientGPU")
    assert w["message"] == admitted["message"] and w["since"] == admitted["lastTransitionTime"]
    assert report["throughput"] is None and report["lastCheckpoint"] is None
    check_ranks(report, jobs.pods("waiter"), 1, procs=8)  # procsPerPod auto: one per GPU
    assert [r["ranks"] for r in report["ranks"]] == ["0-7", "8-15"] and report["worldSize"] == 16
    assert {r["phase"] for r in report["ranks"]} == {"Pending"} and {r["metrics"] for r in report["ranks"]} == {"none"}
    text = kp(kubeconfig, "status", "waiter", namespace=namespace).stdout
    assert "Waiting:     Queued for " in text and f"InsufficientGPU: {admitted['message']}" in text
    assert "Throughput:  no metrics yet (the job is not running)" in text

    rows = {r["name"]: r for r in parsed(kp(kubeconfig, "top", "-o", "json", "--sort-by", "gpus", namespace=namespace))}
    assert [r for r in rows] == ["blocker", "waiter"]  # 24 GPUs, then 16
    assert (rows["waiter"]["state"], rows["waiter"]["gpus"], rows["waiter"]["samplesPerSecond"]) == ("Queued", 16, None)

    res = kp(kubeconfig, "plot", "waiter", "-o", "/tmp/never.png", namespace=namespace)
    assert res.returncode == 1 and res.stderr == (
        f"error: job {namespace}/waiter has no throughput metrics yet (state Queued): the operator records them "
        "while the job runs\n"
    )


def test_restarted_job_shows_the_attempt_and_the_cause(jobs: JobClient, kubeconfig: Path, namespace: str) -> None:
    jobs.create(job_manifest("oom", replicas=2))
    jobs.wait_pods("oom", running(2))
    sim.make_pod_fail(jobs.core, namespace, "oom-a1-worker-1", exit_code=137, reason="OOMKilled")
    jobs.wait_pods("oom", running(2, attempt=2), what="attempt 2 running")
    job = jobs.wait("oom", lambda j: j["status"].get("state") == "Running" and j["status"]["attempt"] == 2)

    report = parsed(kp(kubeconfig, "status", "oom", "-o", "json", namespace=namespace))
    check_common(report, job)
    assert (report["state"], report["attempt"], report["restarts"]) == ("Running", 2, 1)
    [restart] = report["restartHistory"]
    assert (restart["attempt"], restart["reason"]) == (2, "GangRestart")
    assert restart["message"].startswith("pod oom-a1-worker-1 exited with code 137 (OOMKilled); restarting all 2 pods")
    assert report["waiting"] is None
    check_ranks(report, jobs.pods("oom"), 2)
    assert [r["pod"] for r in report["ranks"]] == ["oom-a2-worker-0", "oom-a2-worker-1"]
    text = kp(kubeconfig, "status", "oom", namespace=namespace).stdout
    assert "State:       Running   attempt 2, 1 restart of backoffLimit 3" in text
    assert "Restarts:\n  ATTEMPT   REASON        AGE" in text and "GangRestart" in text
    [row] = parsed(kp(kubeconfig, "top", "-o", "json", namespace=namespace))
    assert (row["restarts"], row["state"]) == (1, "Running")


def test_failed_job_gives_reason_and_message(jobs: JobClient, kubeconfig: Path, namespace: str) -> None:
    jobs.create(job_manifest("bug", replicas=2))
    jobs.wait_pods("bug", running(2))
    sim.make_pod_fail(jobs.core, namespace, "bug-a1-worker-0", exit_code=1, reason="Error")
    job = jobs.wait_state("bug", "Failed")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")

    report = parsed(kp(kubeconfig, "status", "bug", "-o", "json", namespace=namespace))
    check_common(report, job)
    e = report["ended"]
    assert (e["type"], e["status"], e["reason"], e["message"]) == ("Failed", "True", "PodFailed", failed["message"])
    assert "bug-a1-worker-0 exited with code 1" in e["message"]
    assert report["waiting"] is None and report["restarts"] == 0
    text = kp(kubeconfig, "status", "bug", namespace=namespace).stdout
    assert "Failed:      PodFailed " in text and failed["message"] in text
    [row] = parsed(kp(kubeconfig, "top", "-o", "json", namespace=namespace))
    assert row["state"] == "Failed"


def test_finished_job(jobs: JobClient, kubeconfig: Path, namespace: str) -> None:
    jobs.create(job_manifest("done", replicas=2))
    pods = jobs.wait_pods("done", running(2))
    for p in pods:
        sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)
    job = jobs.wait_state("done", "Succeeded")

    report = parsed(kp(kubeconfig, "status", "done", "-o", "yaml", namespace=namespace))
    check_common(report, job)
    e = report["ended"]
    assert (e["type"], e["reason"], e["message"]) == ("Succeeded", "AllReplicasSucceeded", "all 2 pods exited 0")
    assert report["completionTime"] == job["status"]["completionTime"] and report["waiting"] is None
    assert report["ready"] == "0/2"
    assert {r["phase"] for r in report["ranks"]} == {"Succeeded"}
    [row] = parsed(kp(kubeconfig, "top", "-o", "json", namespace=namespace))
    assert row["state"] == "Succeeded"


def test_missing_job_and_empty_namespace(kubeconfig: Path, namespace: str) -> None:
    for args in (["status", "nope"], ["logs", "nope"], ["plot", "nope", "-o", "/tmp/x.png"]):
        res = kp(kubeconfig, *args, namespace=namespace)
        assert res.returncode == 1, res
        assert res.stderr == f'error: trainingjobs.phalanx.dev "nope" not found in namespace "{namespace}"\n'
    res = kp(kubeconfig, "top", namespace=namespace)
    assert (
        res.returncode == 0 and res.stdout == "" and res.stderr == f"No TrainingJobs found in namespace {namespace}.\n"
    )
    assert parsed(kp(kubeconfig, "top", "-o", "json", namespace=namespace)) == []


def test_kubeconfig_context_and_its_namespace_are_used(
    kubeconfig: Path, namespace: str, tmp_path: Path, jobs: JobClient
) -> None:
    jobs.create(job_manifest("ctx", replicas=1))
    config = yaml.safe_load(kubeconfig.read_text())
    ctx = dict(config["contexts"][0])
    ctx = {"name": "team", "context": {**ctx["context"], "namespace": namespace}}
    config["contexts"].append(ctx)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    report = parsed(kp(path, "status", "ctx", "-o", "json", "--context", "team"))
    assert report["namespace"] == namespace and report["name"] == "ctx"
    res = kp(path, "status", "ctx", "--context", "nowhere")
    assert res.returncode == 1 and "nowhere" in res.stderr and len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "manifest", sorted(p.name for p in KUBEFLOW.glob("*.yaml") if "parameter-server" not in p.name)
)
def test_converted_manifests_apply_cleanly(kubeconfig: Path, namespace: str, kubectl: Any, manifest: str) -> None:
    res = cli("convert", str(KUBEFLOW / manifest))
    assert res.returncode == 0, res.stderr
    job = yaml.safe_load(res.stdout)
    job["metadata"]["namespace"] = namespace  # the examples name Kubeflow's namespace
    # A server-side dry run: the apiserver's schema and CEL rules judge the object as they would on a real
    # apply, but no job starts (the converted GPU jobs would take the cluster's GPUs from other tests).
    out = kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert out.returncode == 0, out.stderr
    accepted = json.loads(out.stdout)
    assert accepted["kind"] == "TrainingJob" and accepted["spec"]["replicas"] == job["spec"]["replicas"]
    assert accepted["spec"]["template"]["spec"]["containers"][0]["name"] == "trainer"
