"""helm install, test, upgrade and uninstall against the real local control plane.

The release goes into a namespace that enforces Pod Security `restricted`, so the operator pod and the
helm test pod are admitted under it. kwok plays the kubelet: pods reach Running but run no process.
So `helm test` is exercised like this, and only like this: the hook's own script (taken from the
installed release) runs in this test process with a kubeconfig holding only the operator
ServiceAccount's token, i.e. the identity the hook pod runs as; its exit code then becomes the hook
pod's result (through the kwok stages in localcluster.sim), and `helm test` reports it. What is not
exercised here: that the script runs inside the operator image (no container runtime, no image built).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import sim
from localcluster.testing import Kubectl, wait_for
from tests.helm.release import (
    CHART,
    RESTRICTED,
    denied_requests,
    find,
    helm,
    helm_binary,
    installed,
    new_namespace,
    render,
    service_account_kubeconfig,
)

CRD_NAME = "trainingjobs.phalanx.dev"


@pytest.fixture(scope="module")
def release(kubeconfig: Path, core_v1: client.CoreV1Api) -> Iterator[tuple[str, str]]:
    with installed(kubeconfig, core_v1, "helm-release", labels=RESTRICTED) as (name, namespace):
        yield name, namespace


def deployment(api_client: client.ApiClient, namespace: str) -> Any:
    return client.AppsV1Api(api_client).read_namespaced_deployment("phalanx", namespace)


def operator_pods(core_v1: client.CoreV1Api, namespace: str) -> list[Any]:
    selector = "app.kubernetes.io/instance=phalanx,app.kubernetes.io/component=operator"
    return [p for p in core_v1.list_namespaced_pod(namespace, label_selector=selector).items]


def test_install_runs_the_operator_and_serves_the_crd(
    release: tuple[str, str], api_client: client.ApiClient, core_v1: client.CoreV1Api, kubectl: Kubectl
) -> None:
    _, namespace = release
    crd = json.loads(kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"
    # The served schema is the chart's copy (generated from the same models as crds/).
    chart_crd = yaml.safe_load((CHART / "crds" / "trainingjobs.yaml").read_text())
    assert crd["spec"]["versions"] == chart_crd["spec"]["versions"]
    deploy = deployment(api_client, namespace)
    assert deploy.status.available_replicas == 2  # a leader and a warm standby
    pods = [p for p in operator_pods(core_v1, namespace) if p.metadata.deletion_timestamp is None]
    # Admitted in a namespace enforcing restricted, and running as the chart's ServiceAccount.
    assert len(pods) == 2
    assert all(p.status.phase == "Running" and p.spec.service_account_name == "phalanx" for p in pods)
    assert core_v1.read_namespace(namespace).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_operator_starts_with_the_charts_args_and_env(
    release: tuple[str, str], kubeconfig: Path, core_v1: client.CoreV1Api, tmp_path: Path
) -> None:
    """kwok runs no container, so run the Deployment's own command line here: `python -m phalanx.controller`
    (the image's entrypoint) with the rendered args and env, as the chart's ServiceAccount. kopf must accept
    the args, the liveness probe's endpoint must answer and the metrics port must serve."""
    name, namespace = release
    metrics, probes = free_port(), free_port()
    docs = render({"metrics": {"port": metrics}, "probes": {"port": probes}}, release=name, namespace=namespace)
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    # The downward API's values, as the kubelet would fill them in.
    fields = {"metadata.name": f"{name}-test-pod", "metadata.namespace": namespace}
    env = {
        e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in spec["env"]
    }
    as_operator = service_account_kubeconfig(kubeconfig, core_v1, namespace, "phalanx", tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller", *spec["args"]],
            env={**os.environ, **env, "KUBECONFIG": str(as_operator), "PYTHONPATH": str(CHART.parents[1] / "operator")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            probe = spec["livenessProbe"]["httpGet"]
            assert probe["port"] == "healthz"
            port = next(p["containerPort"] for p in spec["ports"] if p["name"] == "healthz")
            health = wait_for(lambda: http_get(f"http://127.0.0.1:{port}{probe['path']}"), timeout=60, what="healthz")
            assert health.startswith("{")  # kopf's probe results as JSON
            text = wait_for(lambda: http_get(f"http://127.0.0.1:{metrics}/metrics"), timeout=30, what="metrics")
            assert "phalanx_" in text
            assert proc.poll() is None, log.read_text()
            # It leads on the chart's Lease, in the release namespace, which its Role allows.
            leases = client.CoordinationV1Api(core_v1.api_client)

            def holder() -> str | None:
                try:
                    return str(leases.read_namespaced_lease(env["PHALANX_LEASE_NAME"], namespace).spec.holder_identity)
                except client.ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise

            wait_for(lambda: holder() == f"{name}-test-pod", timeout=60, what="the operator holding the chart's Lease")
        finally:
            proc.terminate()
            proc.wait(30)
    assert denied_requests(log) == []


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body.decode() if response.status == 200 else None
    except OSError:
        return None


def test_helm_test_checks_rbac_as_the_operator(
    release: tuple[str, str], kubeconfig: Path, core_v1: client.CoreV1Api, tmp_path: Path
) -> None:
    name, namespace = release
    hooks = [
        d for d in yaml.safe_load_all(helm("get", "hooks", name, f"-n={namespace}", kubeconfig=kubeconfig).stdout) if d
    ]
    hook_pod = next(d for d in hooks if d["kind"] == "Pod")
    script = tmp_path / "rbac_check.py"
    script.write_text(next(d for d in hooks if d["kind"] == "ConfigMap")["data"]["rbac_check.py"])
    assert script.read_text() == (CHART / "files" / "rbac_check.py").read_text()
    args = hook_pod["spec"]["containers"][0]["args"]
    pod_name = hook_pod["metadata"]["name"]
    as_operator = service_account_kubeconfig(kubeconfig, core_v1, namespace, "phalanx", tmp_path / "sa.kubeconfig")

    runner = subprocess.Popen(
        [str(helm_binary()), "test", name, f"--namespace={namespace}", "--timeout=3m", f"--kubeconfig={kubeconfig}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: pod_phase(core_v1, namespace, pod_name) == "Running", timeout=60, what=f"hook pod {pod_name}")
        check = subprocess.run(
            [sys.executable, str(script), *args],
            env={"KUBECONFIG": str(as_operator), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # The pod ends the way the script did.
        if check.returncode == 0:
            sim.make_pod_succeed(core_v1, namespace, pod_name)
        else:
            sim.make_pod_fail(core_v1, namespace, pod_name, exit_code=check.returncode)
        out, _ = runner.communicate(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all checks passed" in check.stdout
    assert "ok   cannot get secrets in all namespaces" in check.stdout
    assert "ok   listed trainingjobs.phalanx.dev in all namespaces" in check.stdout
    assert runner.returncode == 0, out
    assert f"TEST SUITE:     {pod_name}" in out and "Phase:          Succeeded" in out, out
    # hook-delete-policy hook-succeeded: nothing of the test is left behind.
    wait_for(lambda: pod_phase(core_v1, namespace, pod_name) is None, timeout=60, what="hook pod deleted")


def test_upgrade_with_a_changed_value(
    release: tuple[str, str], kubeconfig: Path, api_client: client.ApiClient, core_v1: client.CoreV1Api
) -> None:
    name, namespace = release
    before = deployment(api_client, namespace)
    crd_version = (
        client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME).metadata.resource_version
    )
    helm(
        "upgrade",
        name,
        str(CHART),
        f"--namespace={namespace}",
        "--reuse-values",
        "--set=operator.workers=3",
        "--set=operator.logLevel=verbose",
        "--wait",
        "--timeout=2m",
        kubeconfig=kubeconfig,
    )
    after = deployment(api_client, namespace)
    assert after.metadata.generation > before.metadata.generation
    container = after.spec.template.spec.containers[0]
    assert {e.name: e.value for e in container.env}["PHALANX_WORKERS"] == "3"
    assert "--verbose" in container.args
    assert after.spec.strategy.rolling_update.max_unavailable == 0  # a new pod comes up before an old one goes

    def two_new_pods() -> bool:
        live = [p for p in operator_pods(core_v1, namespace) if p.metadata.deletion_timestamp is None]
        return len(live) == 2 and all(
            "--verbose" in p.spec.containers[0].args and p.status.phase == "Running" for p in live
        )

    wait_for(two_new_pods, timeout=60, what="the two upgraded operator pods")
    history = yaml.safe_load(helm("history", name, f"-n={namespace}", "--output=yaml", kubeconfig=kubeconfig).stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"
    # Helm never touches crds/ on upgrade (docs/install.md says how to upgrade the CRD).
    crd_after = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    assert crd_after.metadata.resource_version == crd_version


def test_uninstall_leaves_no_operator_objects_but_keeps_crd_and_jobs(
    kubeconfig: Path, api_client: client.ApiClient, core_v1: client.CoreV1Api, kubectl: Kubectl
) -> None:
    jobs_ns = new_namespace(core_v1, "helm-uninstall-jobs")
    try:
        with installed(kubeconfig, core_v1, "helm-uninstall", release="gone") as (name, namespace):
            job = {
                "apiVersion": "phalanx.dev/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": "survivor"},
                "spec": {
                    "framework": "pytorch",
                    "replicas": 1,
                    "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:test"}]}},
                },
            }
            client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                "phalanx.dev", "v1alpha1", jobs_ns, "trainingjobs", job
            )
            helm("uninstall", name, f"--namespace={namespace}", "--wait", kubeconfig=kubeconfig)
            selector = f"app.kubernetes.io/instance={name}"

            def leftovers() -> list[str]:
                namespaced = "deployments,replicasets,pods,services,serviceaccounts,configmaps,roles,rolebindings"
                out = kubectl("get", namespaced, "-n", namespace, "-l", selector, "-o", "name").stdout.split()
                out += kubectl("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").stdout.split()
                return out

            # Pods and ReplicaSets go through the garbage collector after helm deleted the Deployment.
            wait_for(lambda: not leftovers() or None, timeout=60, what=f"no objects of release {name}: {leftovers()}")
            assert helm("list", f"-n={namespace}", "-q", kubeconfig=kubeconfig).stdout.strip() == ""
            # What uninstall keeps, as docs/install.md says: the CRD and every TrainingJob.
            client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
            kept = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "phalanx.dev", "v1alpha1", jobs_ns, "trainingjobs", "survivor"
            )
            assert kept["metadata"]["name"] == "survivor"
    finally:
        core_v1.delete_namespace(jobs_ns)


def pod_phase(core_v1: client.CoreV1Api, namespace: str, name: str) -> str | None:
    try:
        phase: str = core_v1.read_namespaced_pod(name, namespace).status.phase
        return phase
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
