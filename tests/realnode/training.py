"""Helpers for TrainingJobs of the reference trainers (trainers/phalanx_trainer/examples) in real
containers, with checkpoints on a hostPath-backed claim.

Tiny models and few steps; --step-sleep slows the steps down so kills and scale-ups land mid-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from localcluster.testing import Kubectl

# The same job for the reference run and the killed run: the final params must match bit for bit.
DDP_ARGS = ["--steps", "60", "--batch-size", "16", "--seed", "7", "--checkpoint-every-steps", "10",
            "--step-sleep", "0.15", "--log-every", "10", "--out", "/checkpoints/final.pt"]  # fmt: skip


def committed_steps(root: Path) -> list[int]:
    """Steps of the committed checkpoints in a claim dir (trainers' store layout: step-N/COMMITTED)."""
    steps = []
    for d in root.glob("step-*"):
        if (d / "COMMITTED").exists():
            steps.append(int(d.name.removeprefix("step-")))
    return sorted(steps)


def job_events(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    """Messages of the Events on a TrainingJob (the operator records each condition change as one)."""
    out = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    items = yaml.safe_load(out)["items"]
    return [e.get("message", "") for e in items if e["involvedObject"].get("name") == name]


def load_params(path: Path) -> dict[str, Any]:
    import torch

    params: dict[str, Any] = torch.load(path, weights_only=True)
    return params
