"""Fixtures of the process node's own tests: the real control plane (tests/conftest.py) and a process
node (dev/procnode) that runs the pods as local processes.

- procnode (module): the node, with its own pod address block; its pods' logs are under
  procnode.logs_dir (a dir per pod: <ns>_<pod>_<uid>/<container>.log and pod.json). Module scope:
  the node exists only while e2e tests run, so it never counts in other tests' cluster capacity.
- claim: a PVC bound to a hostPath PV in a fresh dir, for checkpoints; returns (name, host dir).
- apply: `kubectl apply -f -` of dicts in the test's namespace.
See docs/e2e.md.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

_DEV = str(Path(__file__).resolve().parents[2] / "dev")
if _DEV not in sys.path:
    sys.path.insert(0, _DEV)

from localcluster.testing import Kubectl  # noqa: E402
from procnode.testing import NODE_SELECTOR, TOLERATION, NodeProcess  # noqa: E402


@pytest.fixture(scope="module")
def procnode(kubeconfig: Path, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    if os.geteuid() != 0:
        pytest.fail("the process node needs root (a mount namespace per pod); run the e2e suite as root")
    state = tmp_path_factory.mktemp("procnode")
    # A block of 127.0.0.0/8 of our own, so a second suite on the same machine never shares addresses.
    cidr = f"127.{secrets.choice(range(64, 128))}.{secrets.randbelow(256)}.0/24"
    node = NodeProcess(kubeconfig, state, name=f"procnode-{secrets.token_hex(3)}", pod_cidr=cidr)
    try:
        node.wait_ready(str(kubectl.exe))
        yield node
    finally:
        node.stop()


def on_procnode(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A pod spec (or a template's spec) that lands on the process node."""
    pod_spec.setdefault("nodeSelector", {}).update(NODE_SELECTOR)
    pod_spec.setdefault("tolerations", []).append(dict(TOLERATION))
    return pod_spec


def make_claim(kubectl: Kubectl, namespace: str, name: str, path: Path) -> str:
    """A PVC `name` bound to a new hostPath PV of `path` (created); returns the PV's name."""
    path.mkdir(parents=True, exist_ok=True)
    pv = f"{namespace}-{name}"
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": namespace, "name": name},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Bound", f"pvc/{name}", "--timeout=60s")
    return pv


@pytest.fixture
def claim(namespace: str, kubectl: Kubectl, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """claim(name) -> host dir: a PVC `name` in the test's namespace, bound to a hostPath PV of that dir."""
    pvs: list[str] = []

    def make(name: str) -> Path:
        path = tmp_path / f"claim-{name}"
        pvs.append(make_claim(kubectl, namespace, name, path))
        return path

    yield make
    for pv in pvs:
        kubectl("delete", "pv", pv, "--wait=false", check=False)


@pytest.fixture
def apply(namespace: str, kubectl: Kubectl) -> Callable[..., None]:
    def run(*objects: dict[str, Any]) -> None:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))

    return run
