"""Where the demo's pods run: the process node (pods as local processes) or the real node (containerd,
runc and the kubelet, with the trainer image of `make images`). The story is the same on both."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from localcluster import images, realnode
from localcluster.layout import Layout
from procnode.testing import NODE_SELECTOR, TOLERATION, NodeProcess


class Node(Protocol):
    profile: str  # the local cluster's profile
    scrape_networks: str  # where the operator on this host may read trainer metrics
    what: str  # one line for the log

    def start(self, kubectl_exe: str) -> None: ...
    def place(self, pod_spec: dict[str, Any]) -> None: ...
    def share(self, path: Path) -> None: ...
    def died(self) -> str | None: ...
    def logs(self, pod: dict[str, Any]) -> tuple[str, list[str]]: ...
    def kill(self, pod: dict[str, Any]) -> str: ...
    def stop(self) -> None: ...


def tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, lines)).rstrip()
    except OSError:
        return "(no log)"


def trainer_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == "trainer"), None)


class ProcessNode:
    """dev/procnode: a home-made kubelet that runs each container as a process of this machine."""

    profile = "default"
    scrape_networks = "127.0.0.0/8"

    def __init__(self, state: Path, kubeconfig: Path) -> None:
        self.state, self.kubeconfig = state / "procnode", kubeconfig
        self.node: NodeProcess | None = None
        self.what = f"process node `procnode` Ready: pods run here as processes (logs {self.state / 'logs'})"

    def start(self, kubectl_exe: str) -> None:
        self.node = NodeProcess(self.kubeconfig, self.state, name="procnode", cpu="8")
        self.node.wait_ready(kubectl_exe)

    def place(self, pod_spec: dict[str, Any]) -> None:
        pod_spec.setdefault("nodeSelector", {}).update(NODE_SELECTOR)
        pod_spec.setdefault("tolerations", []).append(TOLERATION)

    def share(self, path: Path) -> None:
        """The process node runs trainers as root: the checkpoint dir needs nothing more."""

    def died(self) -> str | None:
        if self.node is None or self.node.proc.poll() is None:
            return None
        code = self.node.proc.returncode
        return f"the process node exited with code {code}; last lines of {self.node.log_path}:\n" + tail(
            self.node.log_path
        )

    def logs(self, pod: dict[str, Any]) -> tuple[str, list[str]]:
        """(a key for this pod's current run, its trainer's log lines so far)."""
        meta = pod["metadata"]
        runs = self.node.pod_runs(meta["namespace"], meta["name"]) if self.node else []
        if not runs:
            return "", []
        return runs[-1].dir.name, runs[-1].log().splitlines()

    def kill(self, pod: dict[str, Any]) -> str:
        pid = int(str((trainer_status(pod) or {})["containerID"]).removeprefix("procnode://"))
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid}"

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()


class RealNode:
    """The local cluster's real node (profile `real`): containerd + runc + the kubelet on this machine,
    pods on the bridge 10.244.0.0/24, the trainer image loaded from `make images` (cpu variant)."""

    profile = "real"
    scrape_networks = f"{realnode.POD_SUBNET},127.0.0.0/8"
    image = images.images("cpu")[1].ref  # trainer-pytorch

    def __init__(self, state: Path, kubeconfig: Path) -> None:
        self.paths = realnode.Paths.of(Layout(state / "cluster"))
        self.kubeconfig = kubeconfig
        self.kubectl_exe = ""
        self.what = f"real node {realnode.NODE_NAME} Ready: containerd + runc + kubelet, image {self.image}"

    def start(self, kubectl_exe: str) -> None:
        self.kubectl_exe = kubectl_exe  # the cluster came up with its node Ready (localcluster.up)

    def place(self, pod_spec: dict[str, Any]) -> None:
        pod_spec.setdefault("nodeSelector", {})[realnode.NODE_LABEL] = realnode.NODE_LABEL_VALUE
        toleration = {"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
        pod_spec.setdefault("tolerations", []).append(toleration)
        for c in pod_spec["containers"]:
            c["image"], c["imagePullPolicy"] = self.image, "Never"  # nothing can be pulled here

    def share(self, path: Path) -> None:
        """The images run as an unprivileged user: it must reach and write the checkpoint dir."""
        for p in path.parents:
            if p == Path("/"):
                break
            p.chmod(p.stat().st_mode | 0o711)
        path.chmod(0o777)

    def died(self) -> str | None:
        return None  # the kubelet is the cluster's; localcluster watches it

    def logs(self, pod: dict[str, Any]) -> tuple[str, list[str]]:
        meta = pod["metadata"]
        if not (trainer_status(pod) or {}).get("containerID"):
            return "", []
        out = subprocess.run(
            [self.kubectl_exe, f"--kubeconfig={self.kubeconfig}", "logs", "-n", meta["namespace"], meta["name"]],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return meta["uid"], out.stdout.splitlines() if out.returncode == 0 else []

    def kill(self, pod: dict[str, Any]) -> str:
        cid = str((trainer_status(pod) or {})["containerID"]).removeprefix("containerd://")
        realnode.ctr(self.paths, "tasks", "kill", "--signal", "SIGKILL", cid)
        return f"container {cid[:12]}"

    def stop(self) -> None:
        """Stopped with the cluster (localcluster.down)."""
