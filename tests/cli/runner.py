"""Runs `kubectl-phalanx` as its own process, as a user does, so exit codes and stderr are the real ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def cli(
    *args: str,
    kubeconfig: Path | None = None,
    namespace: str | None = None,
    stdin: str | None = None,
    networks: str = "127.0.0.0/8",
) -> subprocess.CompletedProcess[str]:
    extra = [*(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *(["-n", namespace] if namespace else [])]
    env = {
        "PYTHONPATH": str(REPO / "operator"),
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",  # no ~/.kube/config to fall back on
        # The operator's rule for the test clusters: pod addresses on this machine only (kwok's are made up).
        "PHALANX_SCRAPE_NETWORKS": networks,
    }
    return subprocess.run(
        [sys.executable, "-m", "phalanx.cli", *args, *extra],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=120,
    )


def parsed(res: subprocess.CompletedProcess[str]) -> Any:
    """-o json or -o yaml output, parsed (YAML reads both)."""
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)
