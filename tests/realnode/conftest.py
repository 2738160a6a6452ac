"""Fixtures for tests in real containers on the real node (marker realnode; docs/e2e.md).

The session cluster has the `real` profile when a realnode test is selected (tests/conftest.py): one
node that runs containerd, runc and the kubelet on this machine, with the images of `make images`.

- on_realnode(pod_spec): a pod spec (or a template's spec) that lands on the real node.
- realnode (session): the node's paths (containerd socket) and helpers to SIGKILL a container.
- phalanx_release (session): the chart installed with helm, the operator running in-cluster on the
  real node with its ServiceAccount token; uninstalled at the end.
- claim: a PVC bound to a hostPath PV of a fresh host dir that the images' user (65532) can write.
- jobs: a JobClient of JOBS_NAMESPACE; training_job(...): a TrainingJob of the reference trainers in
  the trainer image, on the real node.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import images, realnode
from localcluster.layout import Layout
from localcluster.testing import Kubectl, create_namespace
from tests.conftest import TestCluster
from tests.e2e.conftest import make_claim
from tests.helm.release import CHART, RESTRICTED, helm, values_file
from tests.plugins.operator import GROUP, VERSION, JobClient

RELEASE, RELEASE_NAMESPACE = "phalanx", "phalanx-system"
# The in-cluster operator watches only this namespace (chart scope=namespace): another operator a test
# session starts for kwok jobs must never share a TrainingJob with it.
JOBS_NAMESPACE = "phalanx-realnode"
PYTORCH_IMAGE = images.images("cpu")[1].ref
TENSORFLOW_IMAGE = images.images("cpu")[2].ref
IMAGE_UID = 65532  # the images' numeric user (images/*/Dockerfile)
SCRAPE_INTERVAL, SCRAPE_TIMEOUT = 1, 1.0  # the in-cluster operator's, in seconds
JOB_TIMEOUT = 300.0  # image start, torch/TF imports on 2 cores


def on_realnode(pod_spec: dict[str, Any]) -> dict[str, Any]:
    pod_spec.setdefault("nodeSelector", {})[realnode.NODE_LABEL] = realnode.NODE_LABEL_VALUE
    toleration = {"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
    pod_spec.setdefault("tolerations", []).append(toleration)
    return pod_spec


@dataclass(frozen=True)
class RealNode:
    paths: realnode.Paths

    def kill_container(self, pod: client.V1Pod, container: str = "trainer", signal: str = "SIGKILL") -> None:
        """Signal the container's process from the host: SIGKILL as the kernel's OOM killer or a crash
        would, SIGSTOP for a rank that hangs."""
        status = next(s for s in pod.status.container_statuses if s.name == container)
        cid = status.container_id.removeprefix("containerd://")
        realnode.ctr(self.paths, "tasks", "kill", "--signal", signal, cid)


@pytest.fixture(scope="session")
def node(cluster: TestCluster) -> RealNode:
    # A reused cluster (PHALANX_TEST_KUBECONFIG=.cluster/kubeconfig) is read from its state dir.
    layout = Layout(cluster.info.dir if cluster.info else cluster.kubeconfig.parent)
    if (layout.read_state() or {}).get("profile") != "real":
        pytest.fail(f"realnode tests need a cluster with the `real` profile; {layout.dir} has none", pytrace=False)
    return RealNode(realnode.Paths.of(layout))


def release_values() -> dict[str, Any]:
    return {
        "image": {"pullPolicy": "Never"},  # loaded into the node by localcluster; a pull could only fail
        "scope": "namespace",
        "watchNamespace": JOBS_NAMESPACE,
        # The test jobs train for seconds; a stopped rank's scrape gives up after SCRAPE_TIMEOUT.
        "operator": {"scrapeIntervalSeconds": SCRAPE_INTERVAL, "scrapeTimeoutSeconds": SCRAPE_TIMEOUT},
        **on_realnode({}),
    }


def install_release(kubeconfig: Path) -> None:
    with values_file(release_values()) as flags:
        helm("install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, *flags, "--wait", "--timeout=240s",
             kubeconfig=kubeconfig, timeout=300)  # fmt: skip


@pytest.fixture(scope="session")
def phalanx_release(node: RealNode, kubeconfig: Path, core_v1: client.CoreV1Api) -> Iterator[str]:
    """The chart, installed unchanged; the release namespace enforces Pod Security `restricted`."""
    for ns in (RELEASE_NAMESPACE, JOBS_NAMESPACE):
        try:
            create_namespace(core_v1, ns, labels=RESTRICTED)
        except ApiException as e:  # a reused cluster (PHALANX_TEST_KUBECONFIG) keeps them
            if e.status != 409:
                raise
    install_release(kubeconfig)
    try:
        yield RELEASE_NAMESPACE
    finally:
        helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", kubeconfig=kubeconfig, check=False)


def new_claim(kubectl: Kubectl, root: Path, hint: str) -> tuple[str, Path, str]:
    """(name, host dir, PV): a fresh PVC in JOBS_NAMESPACE bound to a hostPath PV of a new dir under
    `root` that the images' user can reach and write."""
    name = f"{hint}-{secrets.token_hex(3)}"
    path = root / f"claim-{name}"
    path.mkdir(parents=True)
    for p in path.parents:  # the containers' user must reach the dir ...
        if p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o711)
    path.chmod(0o777)  # ... and write in it
    return name, path, make_claim(kubectl, JOBS_NAMESPACE, name, path)


def drop_claim(kubectl: Kubectl, pv: str) -> None:
    kubectl("delete", "pvc", "-n", JOBS_NAMESPACE, pv.removeprefix(f"{JOBS_NAMESPACE}-"), "--wait=false", check=False)
    kubectl("delete", "pv", pv, "--wait=false", check=False)


@pytest.fixture
def claim(kubectl: Kubectl, tmp_path: Path) -> Iterator[Callable[[str], tuple[str, Path]]]:
    """claim(hint) -> (name, host dir): a fresh PVC (new_claim). TrainingJobs left in the namespace are
    deleted after the test."""
    pvs: list[str] = []

    def make(hint: str) -> tuple[str, Path]:
        name, path, pv = new_claim(kubectl, tmp_path, hint)
        pvs.append(pv)
        return name, path

    yield make
    kubectl("delete", "tj", "--all", "-n", JOBS_NAMESPACE, "--wait=false", check=False)
    for pv in pvs:
        drop_claim(kubectl, pv)


def pod_logs(kubectl: Kubectl, namespace: str, pod: str, container: str = "trainer") -> str:
    return kubectl("logs", "-n", namespace, pod, "-c", container).stdout


def wait_for(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.3)
    return value


def pod_manifest(namespace: str, name: str, image: str, command: list[str], resources: dict[str, Any] | None = None,
                 **spec: Any) -> dict[str, Any]:  # fmt: skip
    """A one-shot pod on the real node, restricted by Pod Security's rules."""
    container = {"name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                 "resources": resources or {"limits": {"memory": "256Mi"}}}  # fmt: skip
    restricted = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    pod_spec = {"restartPolicy": "Never", "containers": [container], "securityContext": restricted, **spec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": on_realnode(pod_spec)}  # fmt: skip


def run_pod(kubectl: Kubectl, namespace: str, name: str, image: str, command: list[str],
            timeout: float = 120, **kw: Any) -> tuple[str, str]:  # fmt: skip
    """Run a one-shot pod on the real node; returns (its final phase, its log)."""
    pod = pod_manifest(namespace, name, image, command, **kw)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    jsonpath = "-o=jsonpath={.status.phase}"
    phase = wait_for(
        f"pod {name} to end",
        lambda: (p := kubectl("get", "pod", "-n", namespace, name, jsonpath).stdout) in ("Succeeded", "Failed") and p,
        timeout,
    )
    return str(phase), kubectl("logs", "-n", namespace, name).stdout


@pytest.fixture
def jobs(api_client: client.ApiClient, phalanx_release: str) -> JobClient:
    return JobClient(api_client, JOBS_NAMESPACE)


def unique(hint: str) -> str:
    return f"{hint}-{secrets.token_hex(2)}"


def apply(kubectl: Kubectl, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def training_job(
    name: str, claim: str, args: list[str], framework: str = "pytorch",
    module: str = "phalanx_trainer.examples.pytorch_ddp", image: str = PYTORCH_IMAGE,
    env: list[dict[str, str]] | None = None, cpu: str = "100m", **spec: Any,
) -> dict[str, Any]:  # fmt: skip
    """A 2-rank TrainingJob of the reference trainers (trainers/phalanx_trainer/examples) in JOBS_NAMESPACE,
    checkpointing to the claim's /checkpoints."""
    container: dict[str, Any] = {
        "name": "trainer",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python", "-m", module],
        "args": args,
        "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "env": env or [],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": JOBS_NAMESPACE},
        "spec": {
            "framework": framework,
            "replicas": 2,
            "template": {"spec": on_realnode({"containers": [container]})},
            "checkpoint": {"claimName": claim, "path": "/checkpoints", "keep": 3},
            "runPolicy": {"backoffLimit": 3},
            **spec,
        },
    }
