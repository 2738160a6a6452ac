"""Helpers for TrainingJobs of the reference trainers (trainers/phalanx_trainer/examples) on the process
node (tests/e2e/test_health.py, tests/kueue) and the real node (tests/realnode), with checkpoints on a
hostPath-backed claim.

Tiny models and few steps; --step-sleep slows the steps down so kills and scale-ups land mid-run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from localcluster.testing import Kubectl
from tests.e2e.conftest import on_procnode
from tests.plugins.operator import GROUP, VERSION

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
