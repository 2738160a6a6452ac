"""The peer baseline: Kubeflow's training operator v1 (PyTorchJob), built from the Go module proxy.

The binary and the build live outside the repo (~/.cache/phalanx, or $PHALANX_CACHE); its CRDs are read
from the module cache (`go mod download -json`), never copied into this repo.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import kubernetes
from kubernetes.client.exceptions import ApiException

MODULE = "github.com/kubeflow/training-operator"
VERSION = os.environ.get("KUBEFLOW_TRAINING_OPERATOR_VERSION", "v1.8.1")
NAMESPACE = "kubeflow"  # MY_POD_NAMESPACE: where its cert rotator keeps the webhook Secret
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
WEBHOOK_SECRET = "training-operator-webhook-cert"  # its manifests ship it empty; the rotator fills it


CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # hard-coded in its pkg/cert


class KubeflowUnavailable(Exception):
    """Why the peer baseline cannot run here (kept verbatim for docs/benchmarks.md)."""


def cache() -> Path:
    return Path(os.environ.get("PHALANX_CACHE", Path.home() / ".cache" / "phalanx"))


def binary() -> Path:
    return cache() / "bin" / f"training-operator-{VERSION}"


def _go(*args: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    if shutil.which("go") is None:
        raise KubeflowUnavailable("Go is not installed (needed to build Kubeflow's training operator)")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise KubeflowUnavailable(f"`go {' '.join(args)}` failed: {' | '.join(tail)}")
    return proc.stdout


def module_dir() -> Path:
    """The module's source in the Go module cache (downloaded from the proxy if needed)."""
    out = _go("mod", "download", "-json", f"{MODULE}@{VERSION}", timeout=600)
    info = json.loads(out)
    if info.get("Error"):
        raise KubeflowUnavailable(f"the Go module proxy does not serve {MODULE}@{VERSION}: {info['Error']}")
    return Path(info["Dir"])


def crd_path() -> Path:
    path = module_dir() / "manifests" / "base" / "crds" / "kubeflow.org_pytorchjobs.yaml"
    if not path.is_file():
        raise KubeflowUnavailable(f"{MODULE}@{VERSION} has no {path.name} under manifests/base/crds")
    return path


def ensure_binary(log: object = print) -> Path:
    """Build cmd/training-operator.v1 in a scratch module (as dev/build-binaries.sh does for kubernetes)."""
    out = binary()
    if out.is_file():
        return out
    work = cache() / "build" / f"training-operator-{VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").is_file():
        _go("mod", "init", "phalanx.local/kfbuild", cwd=work)
    if callable(log):
        log(f"building Kubeflow training operator {VERSION} from the Go module proxy (cold: ~10 min)")
    _go("get", f"{MODULE}@{VERSION}", cwd=work)
    tmp = work / f"training-operator-{VERSION}"
    _go("build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), f"{MODULE}/cmd/training-operator.v1", cwd=work)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp), out)
    return out


def prepare_cluster(api: kubernetes.client.ApiClient) -> None:
    """What its manifests install besides the Deployment: its namespace, the (empty) webhook cert Secret and a
    ValidatingWebhookConfiguration for the cert rotator to inject its CA into. The configuration lists
    no webhooks: the apiserver cannot reach a webhook server outside the cluster network, and phalanx
    has no admission webhook either (its validation is the CRD's schema and CEL rules)."""
    core = kubernetes.client.CoreV1Api(api)
    adm = kubernetes.client.AdmissionregistrationV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    try:
        core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": WEBHOOK_SECRET}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    try:
        adm.create_validating_webhook_configuration({"metadata": {"name": WEBHOOK_CONFIG}, "webhooks": []})
    except ApiException as exc:
        if exc.status != 409:
            raise


def mount_certs(api: kubernetes.client.ApiClient, stop: threading.Event, timeout: float = 120.0) -> None:
    """Play the kubelet's Secret volume: once the operator's cert rotator has filled its Secret, write
    the files into the directory it expects them in (it waits for them before it reports ready)."""
    core = kubernetes.client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        data = core.read_namespaced_secret(WEBHOOK_SECRET, NAMESPACE).data or {}
        if all(k in data for k in ("tls.crt", "tls.key", "ca.crt")):
            CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (CERT_DIR / key).write_bytes(base64.b64decode(value))
            return
        time.sleep(0.5)
