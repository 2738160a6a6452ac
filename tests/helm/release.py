"""Helpers for the chart's tests: the cached helm binary, rendering, installs, and a kubeconfig that
carries only a ServiceAccount's token (from the TokenRequest API), so a process using it has exactly
that account's permissions."""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from localcluster import binaries
from localcluster.testing import create_namespace, unique_namespace_name

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "phalanx"
RBAC_CHECK = CHART / "files" / "rbac_check.py"
KUBE_VERSION = binaries.version_of("kube-apiserver").lstrip("v")  # `helm template` assumes v1.20 otherwise
SERVICE_ACCOUNT = "phalanx"  # the chart's default for release "phalanx": the release's full name
# How the apiserver words an authorization (RBAC) denial: `pods is forbidden: User "system:serviceaccount:
# ns:name" cannot list resource "pods" ...`. Admission refusals (PodSecurity, a terminating namespace)
# are worded differently and are not about the operator's permissions.
RBAC_DENIAL = re.compile(r'is forbidden: User "[^"]*" cannot ')
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}


def helm_binary() -> Path:
    return binaries.binary("helm")


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the cached helm; on failure the assertion shows helm's own output."""
    cmd = [str(helm_binary()), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[1:])} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@contextmanager
def values_file(values: dict[str, Any] | None) -> Iterator[list[str]]:
    """Values as a values file (-f), the way users pass them: yields the helm flags."""
    if not values:
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="phalanx-values-") as tmp:
        path = Path(tmp) / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        yield [f"--values={path}"]


def template(
    values: dict[str, Any] | None = None,
    release: str = "phalanx",
    namespace: str = "phalanx-system",
    extra: Iterable[str] = (),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    with values_file(values) as flags:
        return helm(
            "template",
            release,
            str(CHART),
            f"--namespace={namespace}",
            f"--kube-version={KUBE_VERSION}",
            *flags,
            *extra,
            check=check,
        )


def render(
    values: dict[str, Any] | None = None,
    release: str = "phalanx",
    namespace: str = "phalanx-system",
    extra: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The rendered manifests (hooks included), parsed."""
    docs = yaml.safe_load_all(template(values, release, namespace, extra).stdout)
    return [d for d in docs if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def new_namespace(core_v1: client.CoreV1Api, hint: str, labels: dict[str, str] | None = None) -> str:
    return create_namespace(core_v1, unique_namespace_name(hint), labels)


@contextmanager
def installed(
    kubeconfig: Path,
    core_v1: client.CoreV1Api,
    hint: str,
    values: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    release: str = "phalanx",
) -> Iterator[tuple[str, str]]:
    """`helm install --wait` into a fresh namespace; yields (release, namespace); uninstalls after."""
    namespace = new_namespace(core_v1, hint, labels)
    with values_file(values) as flags:
        helm(
            "install",
            release,
            str(CHART),
            f"--namespace={namespace}",
            "--wait",
            "--timeout=2m",
            *flags,
            kubeconfig=kubeconfig,
        )
    try:
        yield release, namespace
    finally:
        helm("uninstall", release, f"--namespace={namespace}", "--wait", kubeconfig=kubeconfig, check=False)
        core_v1.delete_namespace(namespace)


def service_account_kubeconfig(
    admin_kubeconfig: Path, core_v1: client.CoreV1Api, namespace: str, service_account: str, path: Path
) -> Path:
    """Write a kubeconfig holding only a TokenRequest token of namespace/service_account."""
    request = {"spec": {"expirationSeconds": 3600}}
    token = core_v1.create_namespaced_service_account_token(service_account, namespace, request).status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = (
        cluster.get("certificate-authority-data")
        or base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def denied_requests(log: Path) -> list[str]:
    """Lines of an operator log that show an API call refused by authorization."""
    return [line for line in log.read_text(errors="replace").splitlines() if RBAC_DENIAL.search(line)]
