"""The chart renders, lints clean, and what it renders is what a hardened cluster accepts.

Rendering needs only helm; the server-side dry runs send the rendered objects to the real local
apiserver (RBAC, PodSecurity, OpenAPI validation) without persisting them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster.testing import Kubectl
from tests.helm.release import CHART, RESTRICTED, find, helm, kinds, new_namespace, render, template

MONITORING = [
    "--api-versions=monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions=monitoring.coreos.com/v1/PodMonitor",
]


def non_default_values(watch_namespace: str) -> dict[str, Any]:
    """A values file touching every group: namespaced scope, digest-pinned image, monitors, debug logs."""
    return {
        "image": {
            "repository": "registry.example.com/ml/phalanx-operator",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "scope": "namespace",
        "watchNamespace": watch_namespace,
        "rbac": {"aggregateToDefaultRoles": False},
        "serviceAccount": {"name": "trainer-operator", "annotations": {"iam.example.com/role": "phalanx"}},
        "operator": {"workers": 3, "logLevel": "debug", "logFormat": "json", "scrapeTimeoutSeconds": 1.5},
        "replicas": 3,
        "leaderElection": {"leaseDurationSeconds": 30, "renewDeadlineSeconds": 20, "retryPeriodSeconds": 2.5},
        "podDisruptionBudget": {"minAvailable": 2},
        "resources": {"requests": {"cpu": "250m", "memory": "300Mi"}, "limits": {"cpu": 2, "memory": "1Gi"}},
        "metrics": {
            "port": 9090,
            "service": {"port": 80, "annotations": {"example.com/scrape": "true"}},
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True, "interval": "1m"},
        },
        "probes": {"port": 9091},
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "podLabels": {"team": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Training"}},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
    }


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    result: dict[str, Any] = spec["containers"][0]
    return result


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """name -> value; a downward-API entry as fieldRef:<path>."""
    return {
        e["name"]: e["value"] if "value" in e else f"fieldRef:{e['valueFrom']['fieldRef']['fieldPath']}"
        for e in container(docs)["env"]
    }


LEASE_ENV = {
    "PHALANX_POD_NAME": "fieldRef:metadata.name",
    "PHALANX_LEASE_NAMESPACE": "fieldRef:metadata.namespace",
}


@pytest.mark.parametrize("values", [None, non_default_values("ml-jobs")], ids=["default", "non-default"])
def test_helm_lint_is_clean(values: dict[str, Any] | None, tmp_path: Path) -> None:
    flags = []
    if values:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        flags = [f"--values={path}"]
    out = helm("lint", str(CHART), "--strict", *flags)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def test_default_render() -> None:
    docs = render()
    assert kinds(docs) == [
        "ClusterRole",  # the operator's
        "ClusterRole",  # -edit, aggregated to admin/edit
        "ClusterRole",  # -view, aggregated to view
        "ClusterRoleBinding",
        "ConfigMap",  # helm test: the check script
        "Deployment",
        "Pod",  # helm test
        "PodDisruptionBudget",
        "Role",  # leader election: Leases in the release namespace
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    deploy = find(docs, "Deployment")
    # A leader and a warm standby; a rolling update adds the new pod before an old one goes.
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": deploy["spec"]["selector"]}
    role = find(docs, "Role")
    assert role["metadata"] == {**role["metadata"], "name": "phalanx-leader-election", "namespace": "phalanx-system"}
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    assert find(docs, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "phalanx", "namespace": "phalanx-system"}
    ]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "phalanx"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c = container(docs)
    assert c["image"] == "ghcr.io/phalanx-dev/phalanx-operator:0.1.0"  # appVersion when no tag is set
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert c["args"] == ["--liveness=http://0.0.0.0:8081/healthz", "--log-format=plain"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert env(docs) == {
        **LEASE_ENV,
        "PHALANX_LEASE_NAME": "phalanx",
        "PHALANX_LEASE_DURATION_SECONDS": "15",
        "PHALANX_LEASE_RENEW_DEADLINE_SECONDS": "10",
        "PHALANX_LEASE_RETRY_PERIOD_SECONDS": "1",
        "PHALANX_WORKERS": "8",
        "PHALANX_SCRAPE_INTERVAL_SECONDS": "15",
        "PHALANX_SCRAPE_TIMEOUT_SECONDS": "3",
        "PHALANX_OPERATOR_METRICS_PORT": "8080",
    }
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"  # replicas prefer different nodes
    svc = find(docs, "Service")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    binding = find(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "phalanx", "namespace": "phalanx-system"}]
    # The helm test pod must not look like the operator to the metrics Service or a PodMonitor.
    hook = find(docs, "Pod")
    selector = svc["spec"]["selector"]
    assert not selector.items() <= hook["metadata"]["labels"].items()
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert hook["spec"]["serviceAccountName"] == "phalanx"


def test_non_default_render() -> None:
    docs = render(non_default_values("ml-jobs"), release="ops", namespace="platform", extra=MONITORING)
    assert kinds(docs) == [
        "ClusterRole",  # nodes, priorityclasses, resourceflavors, workloadpriorityclasses, CRDs, namespaces only
        "ClusterRoleBinding",
        "ConfigMap",  # dashboards
        "ConfigMap",  # helm test
        "Deployment",
        "Pod",
        "PodDisruptionBudget",
        "PodMonitor",
        "PodMonitor",  # the trainers'
        "Role",  # the watched namespace's
        "Role",  # leader election, in the release namespace
        "RoleBinding",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    c = container(docs)
    assert c["image"] == "registry.example.com/ml/phalanx-operator@sha256:" + "ab" * 32
    assert c["imagePullPolicy"] == "Always"
    assert c["args"] == ["--liveness=http://0.0.0.0:9091/healthz", "--log-format=json", "--debug"]
    assert env(docs) == {
        **LEASE_ENV, "PHALANX_LEASE_NAME": "ops-phalanx", "PHALANX_LEASE_DURATION_SECONDS": "30",
        "PHALANX_LEASE_RENEW_DEADLINE_SECONDS": "20", "PHALANX_LEASE_RETRY_PERIOD_SECONDS": "2.5",
        "PHALANX_WATCH_NAMESPACE": "ml-jobs", "PHALANX_WORKERS": "3", "PHALANX_SCRAPE_INTERVAL_SECONDS": "15",
        "PHALANX_SCRAPE_TIMEOUT_SECONDS": "1.5", "PHALANX_OPERATOR_METRICS_PORT": "9090",
    }  # fmt: skip
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "300Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    pod = find(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["serviceAccountName"] == "trainer-operator"
    assert pod["spec"]["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
    role = find(docs, "Role", "ops-phalanx")
    assert role["metadata"]["namespace"] == "ml-jobs"
    assert find(docs, "RoleBinding", "ops-phalanx")["subjects"] == [
        {"kind": "ServiceAccount", "name": "trainer-operator", "namespace": "platform"}
    ]
    assert find(docs, "Role", "ops-phalanx-leader-election")["metadata"]["namespace"] == "platform"
    deploy = find(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 3 and find(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert "podAntiAffinity" not in deploy["spec"]["template"]["spec"]["affinity"]  # the user's affinity wins
    cluster_resources = {r for rule in find(docs, "ClusterRole")["rules"] for r in rule["resources"]}
    assert cluster_resources == {
        "nodes", "priorityclasses", "resourceflavors", "workloadpriorityclasses", "customresourcedefinitions",
        "namespaces",
    }  # fmt: skip
    kueue = [r for r in role["rules"] if r["apiGroups"] == ["kueue.x-k8s.io"]]
    assert kueue == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list", "create", "delete"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads/status"], "verbs": ["patch"]},
    ]  # fmt: skip
    native = [r for r in role["rules"] if r["apiGroups"] == ["scheduling.k8s.io"]]
    assert native == [
        {"apiGroups": ["scheduling.k8s.io"], "resources": ["workloads", "podgroups"],
         "verbs": ["list", "create", "delete"]},
    ]  # fmt: skip
    svc = find(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 80, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    trainers = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"].endswith("-trainers"))
    assert trainers["spec"]["namespaceSelector"] == {"matchNames": ["ml-jobs"]}
    assert trainers["spec"]["selector"] == {"matchExpressions": [{"key": "phalanx.dev/job-name", "operator": "Exists"}]}
    endpoint = trainers["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["relabelings"][0]["targetLabel"] == "trainingjob"
    pod_monitor = find(docs, "PodMonitor", "ops-phalanx")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == find(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    dashboards = find(docs, "ConfigMap", "ops-phalanx-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["metadata"]["annotations"] == {"grafana_folder": "Training"}
    hook = find(docs, "Pod")
    assert "--scope=namespace" in hook["spec"]["containers"][0]["args"]
    assert "--watch-namespace=ml-jobs" in hook["spec"]["containers"][0]["args"]


def test_monitors_are_skipped_without_the_prometheus_operator_api() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}
    assert "ServiceMonitor" not in kinds(render(values))  # helm template knows no monitoring API by default
    assert {"ServiceMonitor", "PodMonitor"} <= set(kinds(render(values, extra=MONITORING)))


def test_service_monitor_without_service_fails_with_a_message() -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    out = template(values, extra=MONITORING, check=False)
    assert out.returncode != 0
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in out.stderr


def test_one_replica_has_no_disruption_budget_and_no_anti_affinity() -> None:
    docs = render({"replicas": 1})
    assert "PodDisruptionBudget" not in kinds(docs)  # minAvailable 1 of 1 would block every drain
    assert "affinity" not in find(docs, "Deployment")["spec"]["template"]["spec"]
    assert "PodDisruptionBudget" not in kinds(render({"podDisruptionBudget": {"enabled": False}}))


@pytest.mark.parametrize(
    "timings",
    [
        {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10},
        {"renewDeadlineSeconds": 1, "retryPeriodSeconds": 1},
    ],
)
def test_lease_timings_out_of_order_fail_with_a_message(timings: dict[str, int]) -> None:
    out = template({"leaderElection": timings}, check=False)
    assert out.returncode != 0
    assert (
        "leaderElection: leaseDurationSeconds" in out.stderr
        and "must be greater than renewDeadlineSeconds" in out.stderr
    )


def test_metrics_off_sets_port_zero_and_drops_the_service() -> None:
    docs = render({"metrics": {"enabled": False}})
    assert env(docs)["PHALANX_OPERATOR_METRICS_PORT"] == "0"
    assert "Service" not in kinds(docs)
    assert [p["name"] for p in container(docs)["ports"]] == ["healthz"]


def test_every_operator_rule_is_justified_by_a_comment() -> None:
    """Each rule of the operator's (Cluster)Roles is directly preceded by a comment saying why."""
    for values in (None, non_default_values("ml-jobs")):
        text = template(values, extra=["--show-only=templates/rbac.yaml"]).stdout
        for doc in text.split("\n---\n"):
            parsed = yaml.safe_load(doc)
            if not parsed or "rules" not in parsed or parsed["metadata"]["name"].endswith(("-edit", "-view")):
                continue  # bindings; and the aggregated roles, which grant people, not the operator
            lines = doc.split("\nrules:\n", 1)[1].splitlines()
            for i, line in enumerate(lines):
                if line.startswith("- apiGroups:"):
                    assert i > 0 and lines[i - 1].startswith("#"), f"rule without a comment: {line!r} in\n{doc}"


@pytest.mark.parametrize("variant", ["default", "non-default"])
def test_rendered_chart_passes_server_side_dry_run(variant: str, kubectl: Kubectl, core_v1: client.CoreV1Api) -> None:
    """kubectl apply --dry-run=server: schema, RBAC (escalation checks on the Roles), PodSecurity admission
    of the hook Pod, and warnings for the Deployment's pod template, in a namespace enforcing restricted."""
    ns = new_namespace(core_v1, f"dry-run-{variant}", RESTRICTED)
    try:
        values = None if variant == "default" else non_default_values(ns)
        if values:
            values["priorityClassName"] = ""  # a PriorityClass the dry run could resolve is not ours to create
        manifests = template(values, release="dry", namespace=ns, extra=["--include-crds"]).stdout
        # Pods are admitted only if their ServiceAccount exists, and a dry run persists nothing: create it.
        account = next(d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "ServiceAccount")
        kubectl("apply", "-f", "-", input=yaml.safe_dump(account))
        # Server-side apply: the CRD may already be installed by another manager; a dry run changes nothing.
        apply = ["apply", "--server-side", "--force-conflicts", "--field-manager=chart-test", "--dry-run=server"]
        out = kubectl(*apply, "-f", "-", input=manifests, check=False)
        assert out.returncode == 0, out.stderr
        assert "Warning" not in out.stderr, out.stderr  # PodSecurity warns on the Deployment's template
        created = out.stdout
        assert "deployment.apps/dry-phalanx serverside-applied (server dry run)" in created
        assert "pod/dry-phalanx-rbac-check serverside-applied (server dry run)" in created  # restricted admitted it
        assert "customresourcedefinition.apiextensions.k8s.io/trainingjobs.phalanx.dev" in created
    finally:
        core_v1.delete_namespace(ns)
