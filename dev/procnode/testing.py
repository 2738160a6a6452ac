"""Start and stop a process node as a child process (for the e2e fixtures and the demo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procnode.node import LABEL, TAINT

# What a pod spec needs to land on a process node (and only there).
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"], "effect": TAINT["effect"]}
NODE_SELECTOR = {LABEL: "true"}


@dataclass(frozen=True)
class PodRunLog:
    """One pod the node ran: its log dir and pod.json (uid, ip, labels, start time)."""

    dir: Path
    about: dict[str, Any]

    @property
    def attempt(self) -> int:
        return int(self.about["labels"].get("phalanx.dev/attempt", 0))

    def log(self, container: str = "trainer") -> str:
        path = self.dir / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class NodeProcess:
    """`python -m procnode` as a child process, stopped with SIGTERM (it stops its pods first)."""

    def __init__(
        self,
        kubeconfig: Path,
        state_dir: Path,
        name: str = "procnode",
        cpu: str = "8",
        pod_cidr: str = "127.0.0.0/16",
        log: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig, self.state_dir, self.name = kubeconfig, state_dir, name
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log or state_dir / "procnode.log"
        dev = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([dev, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        # The node stops (SIGTERM: its pods first) if whoever started it dies without stopping it.
        argv = ["setpriv", "--pdeathsig", "TERM", "--", sys.executable, "-m", "procnode",
                "--kubeconfig", str(kubeconfig), "--name", name, "--state-dir", str(state_dir), "--cpu", cpu,
                "--pod-cidr", pod_cidr, *extra_args]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def wait_ready(self, kubectl: str, timeout: float = 60.0) -> None:
        """Until the Node is Ready in the API (kubectl: path of a kubectl binary)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"procnode exited with {self.proc.returncode}: {' | '.join(tail)}")
            out = subprocess.run(
                [kubectl, f"--kubeconfig={self.kubeconfig}", "get", "node", self.name, "-o", "json"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0:
                conds = json.loads(out.stdout).get("status", {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"node {self.name} not Ready after {timeout:.0f}s; see {self.log_path}")

    def pod_runs(self, namespace: str, pod: str) -> list[PodRunLog]:
        """Every pod of that name the node ran, oldest first (gang attempts reuse pod names)."""
        runs = []
        for d in self.logs_dir.glob(f"{namespace}_{pod}_*"):
            about = d / "pod.json"
            if about.exists():
                runs.append(PodRunLog(d, json.loads(about.read_text())))
        return sorted(runs, key=lambda r: (r.about["started"], r.dir.stat().st_mtime))

    def pod_log(self, namespace: str, pod: str, container: str = "trainer") -> str:
        """The log of the newest pod of that name ("" if none ran yet)."""
        runs = self.pod_runs(namespace, pod)
        return runs[-1].log(container) if runs else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
