"""Real Kueue next to the local control plane (`python -m localcluster up --kueue`).

The manager binary (dev/build-binaries.sh kueue) runs on this host, out of the cluster, like the
Kubeflow benchmark subject in bench/. Everything else comes from the same module's source in the Go
module cache, as its own manifests configure it: the CRDs (with their conversion webhook), the
mutating and validating webhook configurations, the controller-manager config. What differs, and why:
- webhooks and CRD conversion point at https://127.0.0.1:PORT (clientConfig.url) instead of a
  Service: the apiserver runs on this host, with no cluster network to reach a Service through;
- their serving cert is signed by the cluster's own CA (pki.sign_serving) and that CA is the
  caBundle, so Kueue's internal cert management (which writes Secrets for a Service name) is off;
- leader election is off (one replica), the visibility API server is off (it would need an
  APIService pointing back at this host), and metrics are not served (nothing scrapes them here);
- only the webhooks of Kueue's own kinds and of the frameworks enabled here are installed: the
  rest (pods, deployments, ...) use failurePolicy Fail and would stall every such object whenever
  the manager is down;
- phalanx's TrainingJob is an external framework, so Kueue manages Workloads owned by one, and one
  MultiKueue dispatches (multiKueue.externalFrameworks) when this cluster is a MultiKueue manager;
- waitForPodsReady's timeout is short (30 s on kwok nodes, 3 min with a real node; Kueue's own default is
  30 min), so that a gang that does not become ready is evicted by Kueue within a test.
The manager talks to the apiserver as system:masters: its own ClusterRole is written for
in-cluster use (a ServiceAccount, leader-election Leases in its namespace).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from localcluster import binaries, components, process
from localcluster import pki as pkimod
from localcluster.errors import ClusterError
from localcluster.kubeapi import ApiError, KubeApi
from localcluster.layout import Layout

Log = Callable[[str], None]
MODULE = "sigs.k8s.io/kueue"
NAMESPACE = "kueue-system"
# Kueue's default job integration, plus phalanx's own kind as an external framework (Kind.version.group).
FRAMEWORKS = ("batch/job",)
EXTERNAL_FRAMEWORKS = ("TrainingJob.v1alpha1.phalanx.dev",)
# Webhooks kept from its manifests: those of its own API group and of the enabled frameworks.
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}
# Kueue's kustomization keeps its job webhooks out of these namespaces; so do we.
UNMANAGED_NAMESPACES = ("kube-system", NAMESPACE)
# With internal cert management off, Kueue reads its metrics cert from this fixed path (cmd/kueue)
# even when metrics are not served; any valid pair does, so one is written once per host.
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
PORT_NAMES = ("kueue-webhook", "kueue-health")
START_TIMEOUT = 120.0
USER = "/O=system:masters/CN=kueue-manager"
# waitForPodsReady.timeout (a Go duration): kwok's pods are Ready about a second after they are bound, so
# 30 s is far above what a healthy gang takes even on a loaded machine; a real node starts real
# containers (seconds, longer on a cold image cache) and gets more.
PODS_READY_TIMEOUT = "30s"
PODS_READY_TIMEOUT_REAL_NODE = "3m"
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def version() -> str:
    return binaries.version_of("kueue")


def binary() -> Path:
    path = binaries.binary("kueue")
    if not os.access(path, os.X_OK):
        raise ClusterError(
            f"Kueue's manager {path.name} is not built in {binaries.bin_dir()}; run "
            "`bash dev/build-binaries.sh kueue` (about 10 min cold) and retry"
        )
    return path


def module_dir(ver: str | None = None) -> Path:
    """sigs.k8s.io/kueue@<ver> in the Go module cache (downloaded if absent)."""
    return binaries.go_module_dir(MODULE, ver or version(), "Kueue's manifests", "bash dev/build-binaries.sh kueue")


def _load_all(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ClusterError(f"Kueue's module has no {path}; is KUEUE_VERSION in dev/versions.env a Kueue release?")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crds(module: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs (config/components/crd), with the conversion webhooks its patches add aimed at url."""
    base = module / "config" / "components" / "crd"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = [doc for res in kustomization["resources"] for doc in _load_all(base / res)]
    converted = set()
    for patch in kustomization.get("patches") or []:
        for doc in _load_all(base / patch["path"]):
            if (doc.get("spec") or {}).get("conversion", {}).get("strategy") == "Webhook":
                converted.add(doc["metadata"]["name"])
    for doc in docs:
        if doc["metadata"]["name"] in converted:
            doc["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{webhook_url}/convert", "caBundle": ca_bundle},
                    "conversionReviewVersions": ["v1"],
                },
            }
    return docs


def webhook_configurations(module: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's (config/components/webhook/manifests.yaml) webhook configurations for the kinds kept here,
    each aimed at webhook_url + its path. Names get the `kueue-` prefix its kustomization gives them."""
    out = []
    for doc in _load_all(module / "config" / "components" / "webhook" / "manifests.yaml"):
        hooks = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if not groups or not groups <= WEBHOOK_GROUPS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": webhook_url + path, "caBundle": ca_bundle}
            if groups != {"kueue.x-k8s.io"}:
                names = list(UNMANAGED_NAMESPACES)
                outside = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": names}
                hook["namespaceSelector"] = {"matchExpressions": [outside]}
            hooks.append(hook)
        doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def duration_seconds(value: str) -> float:
    """Seconds in a Go duration of h, m, s and ms parts ("30s", "1m30s"); ClusterError for anything else."""
    parts = _DURATION_PART.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise ClusterError(f"Kueue's waitForPodsReady timeout {value!r} is not a Go duration such as 30s or 2m30s")
    return sum(float(n) * _SECONDS[u] for n, u in parts)


def configuration(
    module: Path, ports: dict[str, int], cert_dir: Path, pods_ready_timeout: str = PODS_READY_TIMEOUT
) -> dict[str, Any]:
    """Its controller-manager config (config/components/manager), bound to loopback, with waitForPodsReady's
    timeout set (Kueue's requeuing strategy and the rest keep its defaults)."""
    duration_seconds(pods_ready_timeout)
    cfg: dict[str, Any] = yaml.safe_load(
        (module / "config" / "components" / "manager" / "controller_manager_config.yaml").read_text()
    )
    cfg.update(
        {
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue-health']}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": ports["kueue-webhook"], "host": "127.0.0.1", "certDir": str(cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": list(FRAMEWORKS), "externalFrameworks": list(EXTERNAL_FRAMEWORKS)},
            # In v1beta2 the section being there is what turns it on (there is no `enable`). recoveryTimeout
            # defaults to timeout, the requeuing backoff to 60 s base: phalanx makes a new Workload per
            # attempt, which no backoff delays (docs/scheduling.md).
            "waitForPodsReady": {"timeout": pods_ready_timeout, "blockAdmission": False},
        }
    )
    # MultiKueue (dev/localcluster/multikueue.py) dispatches TrainingJobs through its generic adapter for
    # external kinds; harmless on a cluster that is no MultiKueue manager.
    cfg["multiKueue"] = {**(cfg.get("multiKueue") or {}),
                         "externalFrameworks": [{"name": n} for n in EXTERNAL_FRAMEWORKS]}  # fmt: skip
    return cfg


def _write_metrics_cert(crt: Path, key: Path) -> None:
    if (METRICS_CERT_DIR / "tls.crt").is_file() and (METRICS_CERT_DIR / "tls.key").is_file():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        for src, name in ((crt, "tls.crt"), (key, "tls.key")):
            tmp = METRICS_CERT_DIR / f".{name}.{os.getpid()}"
            shutil.copyfile(src, tmp)
            tmp.replace(METRICS_CERT_DIR / name)  # atomic: a second cluster starting now reads a whole file
    except OSError as e:
        raise ClusterError(
            f"Kueue reads a metrics cert from {METRICS_CERT_DIR} (fixed in its code) and it cannot be written "
            f"here: {e}; create the directory writable for this user and retry"
        ) from e


def _apply(kubectl: Path, kubeconfig: Path, docs: list[dict[str, Any]]) -> None:
    res = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "apply", "--server-side", "--force-conflicts",
         "--field-manager=localcluster-kueue", "-f", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if res.returncode != 0:
        raise ClusterError(f"applying Kueue's manifests failed: {res.stderr.strip()[:400]}")


def _wait_established(api: KubeApi, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{pending[0]}")
        conds = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
        if conds.get("Established") == "True":
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise ClusterError(f"Kueue's CRD {pending[0]} not Established after {timeout:.0f}s")
        time.sleep(0.2)


def ready(port: int, timeout: float = 1.0) -> bool:
    """Kueue's /readyz: true once its webhook server listens (what its Deployment's probe checks)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(
    layout: Layout, pki: pkimod.Pki, api: KubeApi, api_port: int, ports: dict[str, int],
    die_with_parent: bool, log: Log, pods_ready_timeout: str = PODS_READY_TIMEOUT,
) -> dict[str, Any]:  # fmt: skip
    """Install Kueue's CRDs and webhooks and start its manager; returns the record for cluster.json."""
    timeout_s = duration_seconds(pods_ready_timeout)
    exe = binary()
    module = module_dir()
    t0 = time.monotonic()
    crt, key = pkimod.sign_serving(pki, "kueue-webhook", ("IP:127.0.0.1",))
    cert_dir = layout.run / "kueue" / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(crt, cert_dir / "tls.crt")
    shutil.copyfile(key, cert_dir / "tls.key")
    _write_metrics_cert(crt, key)
    ca_bundle = base64.b64encode(pki.ca_crt.read_bytes()).decode()
    url = f"https://127.0.0.1:{ports['kueue-webhook']}"
    crd_docs = crds(module, url, ca_bundle)
    _apply(binaries.kubectl(), layout.kubeconfig, crd_docs)
    _wait_established(api, [d["metadata"]["name"] for d in crd_docs])
    with contextlib.suppress(ApiError):  # 409: it exists (Kueue started on this cluster before)
        api.post("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    _apply(binaries.kubectl(), layout.kubeconfig, webhook_configurations(module, url, ca_bundle))

    config_path = layout.config / "kueue.yaml"
    manager_config = configuration(module, ports, cert_dir, pods_ready_timeout)
    config_path.write_text(yaml.safe_dump(manager_config, sort_keys=False))
    pkimod.sign_client(pki, "kueue", USER)
    kubeconfig = layout.config / "kueue.kubeconfig"
    cfg = components.kubeconfig(api_port, pki.ca_crt, pki.crt("kueue"), pki.key("kueue"), "kueue", embed=False)
    kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [str(exe), f"--config={config_path}", "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"]
    logfile = layout.log("kueue")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text(f"# {' '.join(argv)}\n")
    proc = process.spawn(argv, logfile, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                         die_with_parent=die_with_parent)  # fmt: skip
    record: dict[str, Any] = {
        "version": version(),
        "ports": ports,
        "podsReadyTimeout": pods_ready_timeout,
        "podsReadyTimeoutSeconds": timeout_s,
        "processes": [{"name": "kueue", "pid": proc.pid, "exe": argv[0], "log": str(logfile)}],
    }
    try:
        _wait_ready(proc, ports["kueue-health"], logfile)
    except BaseException:
        process.stop(proc.pid, argv[0])  # not recorded yet: nobody else would stop it
        raise
    record["ready_seconds"] = round(time.monotonic() - t0, 2)
    log(f"  kueue {version()} ready: webhooks on {url}, waitForPodsReady {pods_ready_timeout} "
        f"(+{record['ready_seconds']:.1f}s)")  # fmt: skip
    return record


def _wait_ready(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready(port):
        rc = proc.poll()
        if rc is not None:
            lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
            last = lines[-1][:240] if lines else "(empty log)"
            raise ClusterError(f"Kueue exited with code {rc} while starting; see {logfile} (last line: {last})")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"Kueue not ready after {START_TIMEOUT:.0f}s (http://127.0.0.1:{port}/readyz); see {logfile}"
            )
        time.sleep(0.2)


def pods_ready_timeout_of(state_dir: Path) -> float:
    """Seconds of waitForPodsReady's timeout that the Kueue of the cluster in state_dir was started with."""
    state = Layout(state_dir).read_state() or {}
    record = state.get("kueue") or {}
    if "podsReadyTimeoutSeconds" not in record:
        raise ClusterError(f"no Kueue recorded in {state_dir}: start it with `python -m localcluster up --kueue`")
    return float(record["podsReadyTimeoutSeconds"])


def stop(record: dict[str, Any]) -> list[str]:
    return [p["name"] for p in record.get("processes") or [] if process.stop(p["pid"], p["exe"])]
