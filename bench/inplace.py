"""Gang recovery in place against recreation, on the real node (runPolicy.restartMode, issue 16).

    python -m bench.inplace [--repeats 3] [--replicas 2] [--kubeconfig PATH] [--out results.json]

What runs: a local cluster with the `real` profile (or --kubeconfig: a running one), the images of
`make images`, the operator on this host, and one PyTorch DDP job per run (the trainer image, CPU,
checkpoints on a hostPath claim). Each run SIGKILLs rank 0's container after the first committed
checkpoint and times the gang's recovery from the kill: until every rank's trainer container runs
again in attempt 2 (the restart itself: kubelet, operator and, for Recreate, the pods' deletion,
creation, scheduling and sandbox), and until every rank has finished a training step again (its
trainer's metrics at its pod IP: phalanx_trainer_attempt 2, phalanx_trainer_steps_total >= 1; this
adds the trainer's own start, the same in both modes: Python, torch, the rendezvous, the checkpoint).
Recreate and InPlace runs are interleaved. Goal: in place under half of recreation. Prints medians,
min and max; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import bench  # noqa: F401  (puts operator/ and dev/ on sys.path)
from bench import REPO
from localcluster import cluster as lc
from localcluster import images, process, realnode
from localcluster.layout import Layout
from localcluster.testing import Kubectl, create_namespace

NAMESPACE = "bench-inplace"
GROUP, VERSION = "phalanx.dev", "v1alpha1"
ARGS = [
    "--steps",
    "400",
    "--batch-size",
    "16",
    "--seed",
    "7",
    "--checkpoint-every-steps",
    "10",
    "--step-sleep",
    "0.15",
    "--log-every",
    "50",
]
TIMEOUT = 300.0


def metric(body: str, name: str) -> float | None:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", body, re.M)
    return float(m.group(1)) if m else None


def scrape(ip: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{ip}:9400/metrics", timeout=1) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def job(name: str, claim: str, mode: str, replicas: int) -> dict[str, Any]:
    container = {
        "name": "trainer",
        "image": images.images("cpu")[1].ref,
        "imagePullPolicy": "Never",
        "command": ["python", "-m", "phalanx_trainer.examples.pytorch_ddp"],
        "args": ARGS,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
    }
    pod_spec = {
        "containers": [container],
        "nodeSelector": {realnode.NODE_LABEL: realnode.NODE_LABEL_VALUE},
        "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "framework": "pytorch",
            "replicas": replicas,
            "template": {"spec": pod_spec},
            "checkpoint": {"claimName": claim, "path": "/checkpoints", "keep": 3},
            "runPolicy": {"backoffLimit": 3, "restartMode": mode},
        },
    }


def claim(kubectl: Kubectl, root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    for p in [path, *path.parents]:
        if p != Path("/"):
            p.chmod(p.stat().st_mode | 0o711)
    path.chmod(0o777)  # the images' user writes the checkpoints
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NAMESPACE}-{name}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": NAMESPACE, "name": name},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{NAMESPACE}-{name}",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return path


def pods(kubectl: Kubectl, name: str) -> list[dict[str, Any]]:
    out = kubectl("get", "pods", "-n", NAMESPACE, "-l", f"phalanx.dev/job-name={name}", "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def one(kubectl: Kubectl, paths: realnode.Paths, root: Path, mode: str, n: int, replicas: int) -> dict[str, Any]:
    name = f"{mode.lower()}-{n}-{secrets.token_hex(2)}"
    ckpt = claim(kubectl, root, name)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(job(name, name, mode, replicas)))
    deadline = time.monotonic() + TIMEOUT
    while not any((d / "COMMITTED").exists() for d in ckpt.glob("step-*")):
        assert time.monotonic() < deadline, f"{name}: no checkpoint in {TIMEOUT:.0f} s"
        time.sleep(0.2)
    before = {p["metadata"]["uid"] for p in pods(kubectl, name)}
    victim = next(p for p in pods(kubectl, name) if p["metadata"]["labels"]["phalanx.dev/replica-index"] == "0")
    cid = next(c["containerID"] for c in victim["status"]["containerStatuses"] if c["name"] == "trainer")
    t0, killed_at = time.monotonic(), datetime.now(UTC).replace(microsecond=0)
    realnode.ctr(paths, "tasks", "kill", "--signal", "SIGKILL", cid.removeprefix("containerd://"))
    restarted: float | None = None
    while True:
        assert time.monotonic() < t0 + TIMEOUT, f"{name}: the gang did not recover in {TIMEOUT:.0f} s"
        now = [p for p in pods(kubectl, name) if p["metadata"]["labels"].get("phalanx.dev/attempt") == "2"]
        if restarted is None and len(now) == replicas and all(started_since(p, killed_at) for p in now):
            restarted = time.monotonic() - t0
        ips = [p["status"].get("podIP") for p in now]
        if len(ips) == replicas and all(ips):
            bodies = [scrape(ip) for ip in ips]
            if all(
                metric(b, "phalanx_trainer_attempt") == 2 and (metric(b, "phalanx_trainer_steps_total") or 0) >= 1
                for b in bodies
            ):
                break
        time.sleep(0.1)
    seconds = time.monotonic() - t0
    same = before == {p["metadata"]["uid"] for p in pods(kubectl, name)}
    kubectl("delete", "tj", "-n", NAMESPACE, name, "--wait=false")
    print(
        f"  {mode:9s} run {n}: containers running again {restarted or seconds:5.2f} s, training again "
        f"{seconds:5.2f} s ({'same pods' if same else 'new pods'})",
        flush=True,
    )
    return {
        "mode": mode,
        "run": n,
        "seconds": round(seconds, 2),
        "restarted_seconds": round(restarted or seconds, 2),
        "same_pods": same,
    }


def started_since(pod: dict[str, Any], since: datetime) -> bool:
    """The pod's trainer container runs, in a run begun after `since` (seconds resolution)."""
    for c in pod["status"].get("containerStatuses") or []:
        started = ((c.get("state") or {}).get("running") or {}).get("startedAt")
        if c["name"] == "trainer" and started:
            return datetime.fromisoformat(started.replace("Z", "+00:00")) >= since
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inplace", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kubeconfig", type=Path, help="a running cluster with the real profile")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-inplace-") as tmp_s:
        tmp = Path(tmp_s)
        info = None
        if args.kubeconfig is None:
            info = lc.up("real", tmp / "cluster", log=print)
            kubeconfig, layout = info.kubeconfig, Layout(tmp / "cluster")
        else:
            kubeconfig, layout = args.kubeconfig, Layout(args.kubeconfig.parent)
        kubectl = Kubectl(kubeconfig)
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PHALANX_OPERATOR_METRICS_PORT": "0",
            "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("operator", "trainers")),
            "PHALANX_SCRAPE_NETWORKS": f"{realnode.POD_SUBNET},127.0.0.0/8",
        }
        kubectl("apply", "-f", str(REPO / "crds"))
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException

        try:
            create_namespace(client.CoreV1Api(config.new_client_from_config(str(kubeconfig))), NAMESPACE)
        except ApiException as e:
            if e.status != 409:  # a reused cluster (--kubeconfig) keeps it
                raise
        with (tmp / "operator.log").open("ab") as log:
            op = subprocess.Popen(
                [sys.executable, "-m", "phalanx.controller"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        results: list[dict[str, Any]] = []
        try:
            for n in range(args.repeats):
                for mode in ("Recreate", "InPlace"):
                    results.append(one(kubectl, realnode.Paths.of(layout), tmp / "claims", mode, n, args.replicas))
        finally:
            process.end(op, grace=15)
            if info is not None:
                lc.down(tmp / "cluster", log=print)
    summary: dict[str, Any] = {"replicas": args.replicas, "runs": results}
    for key, what in (("restarted_seconds", "containers running again"), ("seconds", "training again")):
        for mode in ("Recreate", "InPlace"):
            xs = [r[key] for r in results if r["mode"] == mode]
            summary[f"{mode}_{key}"] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
            print(
                f"{what:25s} {mode:9s} median {statistics.median(xs):5.2f} s (min {min(xs):.2f}, "
                f"max {max(xs):.2f}), n={len(xs)}"
            )
        ratio = summary[f"InPlace_{key}"]["median"] / summary[f"Recreate_{key}"]["median"]
        summary[f"ratio_{key}"] = round(ratio, 3)
        print(f"{what}: in place / recreate {ratio:.2f} (goal < 0.5)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
