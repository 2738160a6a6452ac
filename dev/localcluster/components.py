"""Command lines and config files of the five control-plane processes.

Everything listens on 127.0.0.1 only, on ports picked at start. Why each non-obvious flag is there is
said next to it; the rest are the components' documented defaults made explicit.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster import pki as pkimod
from localcluster.layout import Layout

ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PORT_NAMES = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.64.0.0/14"  # kwok hands pod IPs out of it; its default /24 runs dry past 254 pods
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"
NODE_LEASE_SECONDS = 40


@dataclass(frozen=True)
class Plan:
    """Everything the command lines depend on."""

    layout: Layout
    pki: pkimod.Pki
    ports: dict[str, int]
    etcd_data: Path
    bins: dict[str, Path]
    nodes: int
    feature_gates: Mapping[str, bool] = field(default_factory=dict)  # for apiserver, scheduler, controller manager
    runtime_config: tuple[str, ...] = ()  # API versions the apiserver serves beyond its defaults

    def kubeconfig_for(self, component: str) -> Path:
        return self.layout.config / f"{component}.kubeconfig"


def kubeconfig(port: int, ca: Path, cert: Path, key: Path, user: str, embed: bool) -> dict[str, Any]:
    """A kubeconfig for https://127.0.0.1:port (an IP, never localhost: it may resolve to ::1)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cluster: dict[str, Any] = {"server": f"https://127.0.0.1:{port}"}
    auth: dict[str, Any]
    if embed:
        cluster["certificate-authority-data"] = b64(ca)
        auth = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    else:
        cluster["certificate-authority"] = str(ca)
        auth = {"client-certificate": str(cert), "client-key": str(key)}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "phalanx-local", "cluster": cluster}],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "phalanx-local", "context": {"cluster": "phalanx-local", "user": user}}],
        "current-context": "phalanx-local",
    }


def write_configs(plan: Plan) -> None:
    p, port = plan.pki, plan.ports["kube-apiserver"]
    plan.layout.config.mkdir(parents=True, exist_ok=True)
    # The admin kubeconfig embeds its certs so it can be copied elsewhere and still work.
    admin = kubeconfig(port, p.ca_crt, p.crt("admin"), p.key("admin"), "phalanx-admin", embed=True)
    plan.layout.kubeconfig.write_text(yaml.safe_dump(admin, sort_keys=False))
    plan.layout.kubeconfig.chmod(0o600)
    for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
        cfg = kubeconfig(port, p.ca_crt, p.crt(name), p.key(name), name, embed=False)
        plan.kubeconfig_for(name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    # Client QPS lives in the scheduler's config file (its --kube-api-qps flag is deprecated).
    qps = 200 if plan.nodes <= 100 else 1000
    sched = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(plan.kubeconfig_for("kube-scheduler")), "qps": qps, "burst": qps * 2},
        "leaderElection": {"leaderElect": False},
    }
    (plan.layout.config / "kube-scheduler.yaml").write_text(yaml.safe_dump(sched, sort_keys=False))


def argv(plan: Plan, name: str) -> list[str]:
    return [str(plan.bins[name]), *_ARGS[name](plan)]


def _gates(plan: Plan) -> list[str]:
    """--feature-gates, the same for every component that reads them (an alpha API needs all three)."""
    if not plan.feature_gates:
        return []
    gates = ",".join(f"{k}={str(v).lower()}" for k, v in sorted(plan.feature_gates.items()))
    return [f"--feature-gates={gates}"]


def _etcd(plan: Plan) -> list[str]:
    client, peer = f"http://127.0.0.1:{plan.ports['etcd']}", f"http://127.0.0.1:{plan.ports['etcd-peer']}"
    return [
        "--name=phalanx",
        f"--data-dir={plan.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=phalanx={peer}",
        "--unsafe-no-fsync",  # throwaway data: fsync only costs latency on 2 cores
        # Compact often: node leases alone write ~100 revisions/s with 1000 nodes, all of it in RAM.
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=5m",
        "--quota-backend-bytes=8589934592",
        "--log-level=warn",
    ]


def _apiserver(plan: Plan) -> list[str]:
    p = plan.pki
    return [
        f"--etcd-servers=http://127.0.0.1:{plan.ports['etcd']}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",  # else it looks for a default route and may die without one
        f"--secure-port={plan.ports['kube-apiserver']}",
        f"--cert-dir={plan.layout.run / 'kube-apiserver'}",
        f"--tls-cert-file={p.crt('apiserver')}",
        f"--tls-private-key-file={p.key('apiserver')}",
        f"--client-ca-file={p.ca_crt}",
        "--authorization-mode=Node,RBAC",  # RBAC really enforced: tests exercise our RBAC manifests
        # On top of the defaults (PodSecurity included); owner-reference enforcement proves the
        # operator's trainingjobs/finalizers rule (blockOwnerDeletion).
        "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
        "--allow-privileged=true",  # so it is PodSecurity, not this flag, that rejects privileged pods
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={p.sa_pub}",
        f"--service-account-signing-key-file={p.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",  # no real endpoint for the `kubernetes` Service to point at
        "--profiling=false",
        # logs/exec/port-forward on the real node (PROFILE=real): the kubelet checks this client cert.
        # No --kubelet-certificate-authority: the process node's logs endpoint is self-signed, and
        # with it set the apiserver refuses `kubectl logs` there. Every kubelet is on loopback or
        # the host's own bridge, so the unverified hop never leaves this machine.
        f"--kubelet-client-certificate={p.crt('kubelet-client')}",
        f"--kubelet-client-key={p.key('kubelet-client')}",
        "--kubelet-preferred-address-types=InternalIP",
        *_gates(plan),
        *([f"--runtime-config={','.join(f'{v}=true' for v in plan.runtime_config)}"] if plan.runtime_config else []),
    ]


def _controller_manager(plan: Plan) -> list[str]:
    p = plan.pki
    qps = 100 if plan.nodes <= 100 else 500
    return [
        f"--kubeconfig={plan.kubeconfig_for('kube-controller-manager')}",
        "--bind-address=127.0.0.1",
        f"--secure-port={plan.ports['kube-controller-manager']}",
        f"--cert-dir={plan.layout.run / 'kube-controller-manager'}",
        "--leader-elect=false",
        # Each controller runs under its own ServiceAccount, as in kubeadm clusters: RBAC as in prod.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={p.sa_key}",  # signs legacy SA token Secrets
        f"--root-ca-file={p.ca_crt}",  # published to every namespace as kube-root-ca.crt
        f"--cluster-signing-cert-file={p.ca_crt}",  # so CertificateSigningRequests get signed
        f"--cluster-signing-key-file={p.ca_key}",
        # Client-side rate limits (default 20 qps) make GC and namespace deletion crawl in tests.
        f"--kube-api-qps={qps}",
        f"--kube-api-burst={qps * 2}",
        # Simulated nodes only miss heartbeats when this 2-core machine is overloaded; declaring them
        # lost then (default 50 s) would taint and evict pods that tests depend on.
        "--node-monitor-grace-period=5m",
        *_gates(plan),
    ]


def _scheduler(plan: Plan) -> list[str]:
    return [
        f"--config={plan.layout.config / 'kube-scheduler.yaml'}",
        "--bind-address=127.0.0.1",
        f"--secure-port={plan.ports['kube-scheduler']}",
        f"--cert-dir={plan.layout.run / 'kube-scheduler'}",
        *_gates(plan),
    ]


def _kwok(plan: Plan) -> list[str]:
    return [
        f"--kubeconfig={plan.kubeconfig_for('kwok')}",
        f"--config={plan.layout.config / 'kwok.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
        f"--server-address=127.0.0.1:{plan.ports['kwok']}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        f"--cidr={POD_CIDR}",
    ]


_ARGS = {
    "etcd": _etcd,
    "kube-apiserver": _apiserver,
    "kube-controller-manager": _controller_manager,
    "kube-scheduler": _scheduler,
    "kwok": _kwok,
}


def env(plan: Plan, name: str, base: dict[str, str]) -> dict[str, str]:
    if name == "kwok":
        # kwok always merges ~/.kwok/kwok.yaml into its config: give it a HOME of its own.
        home = plan.layout.run / "kwok-home"
        home.mkdir(parents=True, exist_ok=True)
        return {**base, "HOME": str(home)}
    return base
