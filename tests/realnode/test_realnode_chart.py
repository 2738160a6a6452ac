"""The chart, unchanged, on the real node: the operator image runs in-cluster with its ServiceAccount
token (no kubeconfig, no host network), its probe and metrics answer at the pod's IP, `helm test`
runs its hook pod for real, and upgrade and uninstall work."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from localcluster.testing import Kubectl, wait_for
from tests.helm.release import helm
from tests.realnode.conftest import RELEASE, RealNode, install_release

pytestmark = pytest.mark.realnode

SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"


def operator_pod(core_v1: client.CoreV1Api, namespace: str) -> client.V1Pod:
    pods = [p for p in core_v1.list_namespaced_pod(namespace, label_selector=SELECTOR).items
            if p.metadata.deletion_timestamp is None]  # fmt: skip
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def test_the_operator_runs_in_cluster_with_its_service_account_token(
    node: RealNode, phalanx_release: str, core_v1: client.CoreV1Api, kubectl: Kubectl
) -> None:
    pod = operator_pod(core_v1, phalanx_release)
    assert pod.status.phase == "Running" and pod.spec.node_name == "phalanx-real-0"
    assert not pod.spec.host_network
    assert [v.name for v in pod.spec.volumes if v.secret or v.host_path] == []  # no kubeconfig mounted
    assert any(v.projected for v in pod.spec.volumes), "no ServiceAccount token projected"
    (status,) = pod.status.container_statuses
    assert status.ready and status.restart_count == 0, status
    log = kubectl("logs", "-n", phalanx_release, pod.metadata.name).stdout
    assert "Traceback" not in log, log
    assert "getpwuid" not in log, log  # the crash of a numeric user without a passwd entry


def test_its_probe_and_metrics_answer_at_the_pod_ip(
    node: RealNode, phalanx_release: str, core_v1: client.CoreV1Api
) -> None:
    pod = operator_pod(core_v1, phalanx_release)
    ip = pod.status.pod_ip
    assert ip.startswith("10.244.0."), ip
    code, _ = get(f"http://{ip}:8081/healthz")
    assert code == 200
    code, body = get(f"http://{ip}:8080/metrics")
    assert code == 200 and "phalanx_operator_work_queue_depth" in body, body[:500]


def test_helm_test_runs_the_rbac_check_in_the_operator_image(
    node: RealNode, phalanx_release: str, kubeconfig: Path
) -> None:
    # The hook pod (rbac_check.py in the operator image) is deleted once it succeeds, so no --logs.
    out = helm("test", RELEASE, "-n", phalanx_release, "--timeout=180s", kubeconfig=kubeconfig, timeout=240)
    assert "Phase:          Succeeded" in out.stdout, out.stdout


def test_helm_upgrade_replaces_the_operator_pod(
    node: RealNode, phalanx_release: str, kubeconfig: Path, core_v1: client.CoreV1Api
) -> None:
    before = operator_pod(core_v1, phalanx_release)
    helm("upgrade", RELEASE, str(Path(__file__).resolve().parents[2] / "charts" / "phalanx"), "-n", phalanx_release,
         "--reuse-values", "--set", "operator.logLevel=verbose", "--wait", "--timeout=240s",
         kubeconfig=kubeconfig, timeout=300)  # fmt: skip
    wait_for(lambda: len(core_v1.list_namespaced_pod(phalanx_release, label_selector=SELECTOR).items) == 1,
             timeout=60, what="the old operator pod to go")  # fmt: skip
    after = operator_pod(core_v1, phalanx_release)
    assert after.metadata.uid != before.metadata.uid
    assert "--verbose" in after.spec.containers[0].args
    assert after.status.container_statuses[0].ready


def test_helm_uninstall_removes_the_operator_and_a_new_install_works(
    node: RealNode, phalanx_release: str, kubeconfig: Path, core_v1: client.CoreV1Api
) -> None:
    helm("uninstall", RELEASE, "-n", phalanx_release, "--wait", "--timeout=120s", kubeconfig=kubeconfig)
    wait_for(lambda: not core_v1.list_namespaced_pod(phalanx_release, label_selector=SELECTOR).items,
             timeout=60, what="the operator pod to go")  # fmt: skip
    assert not client.AppsV1Api(core_v1.api_client).list_namespaced_deployment(phalanx_release).items
    install_release(kubeconfig)  # the training tests after this module use the release
    assert operator_pod(core_v1, phalanx_release).status.phase == "Running"
