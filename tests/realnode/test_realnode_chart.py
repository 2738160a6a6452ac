"""The chart, unchanged, on the real node: its two operator replicas run in-cluster with their
ServiceAccount token (no kubeconfig, no host network), one of them leads (the Lease), their probes and
metrics answer at the pods' IPs, `helm test` runs its hook pod for real, and upgrade and uninstall work."""

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


REPLICAS = 2  # the chart's default (values.yaml `replicas`): one leader, one warm standby


def operator_pods(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    pods = [p for p in core_v1.list_namespaced_pod(namespace, label_selector=SELECTOR).items
            if p.metadata.deletion_timestamp is None]  # fmt: skip
    assert len(pods) == REPLICAS, [p.metadata.name for p in pods]
    return sorted(pods, key=lambda p: p.metadata.name)


def leader(core_v1: client.CoreV1Api, namespace: str) -> str:
    """The pod that holds the chart's Lease (its name is its identity), once one does."""
    names = {p.metadata.name for p in operator_pods(core_v1, namespace)}
    coordination = client.CoordinationV1Api(core_v1.api_client)

    def holder() -> str | None:
        # A pod is Ready once its caches are warm, a moment before its elector first creates the Lease.
        try:
            return str(coordination.read_namespaced_lease(RELEASE, namespace).spec.holder_identity)
        except client.exceptions.ApiException as e:
            if e.status == 404:
                return None
            raise

    wait_for(lambda: holder() in names, timeout=60, what=f"one of {sorted(names)} to hold the Lease")
    return str(holder())


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def test_the_operator_runs_in_cluster_with_its_service_account_token(
    node: RealNode, phalanx_release: str, core_v1: client.CoreV1Api, kubectl: Kubectl
) -> None:
    for pod in operator_pods(core_v1, phalanx_release):
        assert pod.status.phase == "Running" and pod.spec.node_name == "phalanx-real-0"
        assert not pod.spec.host_network
        assert [v.name for v in pod.spec.volumes if v.secret or v.host_path] == []  # no kubeconfig mounted
        assert any(v.projected for v in pod.spec.volumes), "no ServiceAccount token projected"
        (status,) = pod.status.container_statuses
        assert status.ready and status.restart_count == 0, status
        log = kubectl("logs", "-n", phalanx_release, pod.metadata.name).stdout
        assert "Traceback" not in log, log
        assert "getpwuid" not in log, log  # the crash of a numeric user without a passwd entry
    lead = leader(core_v1, phalanx_release)
    log = kubectl("logs", "-n", phalanx_release, lead).stdout
    assert f"leader election: {lead}" in log and "leads now; acting" in log, log


def test_its_probes_and_metrics_answer_at_the_pod_ips(
    node: RealNode, phalanx_release: str, core_v1: client.CoreV1Api
) -> None:
    for pod in operator_pods(core_v1, phalanx_release):  # the standby's too: it keeps warm caches
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


def test_helm_upgrade_replaces_the_operator_pods(
    node: RealNode, phalanx_release: str, kubeconfig: Path, core_v1: client.CoreV1Api
) -> None:
    before = {p.metadata.uid for p in operator_pods(core_v1, phalanx_release)}
    helm("upgrade", RELEASE, str(Path(__file__).resolve().parents[2] / "charts" / "phalanx"), "-n", phalanx_release,
         "--reuse-values", "--set", "operator.logLevel=verbose", "--wait", "--timeout=240s",
         kubeconfig=kubeconfig, timeout=300)  # fmt: skip
    wait_for(lambda: len(core_v1.list_namespaced_pod(phalanx_release, label_selector=SELECTOR).items) == REPLICAS,
             timeout=60, what="the old operator pods to go")  # fmt: skip
    after = operator_pods(core_v1, phalanx_release)
    assert not before & {p.metadata.uid for p in after}
    for pod in after:
        assert "--verbose" in pod.spec.containers[0].args
        assert pod.status.container_statuses[0].ready
    leader(core_v1, phalanx_release)  # the lease passed to a new pod


def test_helm_uninstall_removes_the_operator_and_a_new_install_works(
    node: RealNode, phalanx_release: str, kubeconfig: Path, core_v1: client.CoreV1Api
) -> None:
    helm("uninstall", RELEASE, "-n", phalanx_release, "--wait", "--timeout=120s", kubeconfig=kubeconfig)
    wait_for(lambda: not core_v1.list_namespaced_pod(phalanx_release, label_selector=SELECTOR).items,
             timeout=60, what="the operator pods to go")  # fmt: skip
    assert not client.AppsV1Api(core_v1.api_client).list_namespaced_deployment(phalanx_release).items
    install_release(kubeconfig)  # the training tests after this module use the release
    assert all(p.status.phase == "Running" for p in operator_pods(core_v1, phalanx_release))
