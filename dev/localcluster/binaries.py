"""Where the control plane's binaries live and which versions they are.

The versions come from dev/versions.env, the same file dev/build-binaries.sh reads, so the Python side
never asks for a binary the script did not build. An environment variable of the same name overrides
a version in both places.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from localcluster.errors import BinariesMissing, ClusterError

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "dev" / "versions.env"

# Which version key each binary is built at (mirrors build-binaries.sh).
VERSION_KEY: dict[str, str] = {
    "etcd": "ETCD_VERSION",
    "kube-apiserver": "K8S_VERSION",
    "kube-controller-manager": "K8S_VERSION",
    "kube-scheduler": "K8S_VERSION",
    "kubectl": "K8S_VERSION",
    "kwok": "KWOK_VERSION",
    "helm": "HELM_VERSION",
    "kubelet": "K8S_VERSION",
    "kube-proxy": "K8S_VERSION",
    "coredns": "COREDNS_VERSION",
    "pause": "PAUSE_VERSION",
    "kueue": "KUEUE_VERSION",  # for the tests marked kueue (built by `make binaries` too)
}
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")


def parse_versions(text: str) -> dict[str, str]:
    """Parse KEY=value lines; '#' comments and blank lines are ignored."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier() or not value.strip():
            raise ClusterError(f"{VERSIONS_FILE}:{n}: expected KEY=value, got {raw!r}")
        out[key.strip()] = value.strip()
    return out


def versions() -> dict[str, str]:
    """The pinned versions, with same-named environment variables taking precedence."""
    pinned = parse_versions(VERSIONS_FILE.read_text())
    return {key: os.environ.get(key) or value for key, value in pinned.items()}


def cache_dir() -> Path:
    return Path(os.environ.get("PHALANX_CACHE") or Path.home() / ".cache" / "phalanx")


def bin_dir() -> Path:
    return cache_dir() / "bin"


def version_of(name: str) -> str:
    return versions()[VERSION_KEY[name]]


def binary(name: str) -> Path:
    """Path of a cached binary, e.g. ~/.cache/phalanx/bin/kube-apiserver-v1.36.3 (may not exist)."""
    return bin_dir() / f"{name}-{version_of(name)}"


def kubectl() -> Path:
    return binary("kubectl")


def require(names: tuple[str, ...] = CONTROL_PLANE) -> dict[str, Path]:
    """Paths of the named binaries; raises BinariesMissing naming what to run if any is absent."""
    paths = {name: binary(name) for name in names}
    missing = [p.name for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise BinariesMissing(
            f"control-plane binaries missing from {bin_dir()}: {', '.join(missing)}; "
            "run `make binaries` (bash dev/build-binaries.sh; about 10 min cold) and retry"
        )
    return paths


def go_module_dir(module: str, version: str, what: str, rerun: str) -> Path:
    """Directory of module@version in the Go module cache (downloaded if absent). `what` names what is
    read from it and `rerun` the command that fetches it, for the one-line errors."""
    go = shutil.which("go")
    if go is None:
        raise ClusterError(
            f"Go is not installed, but {what} are read from the Go module cache; install Go >= 1.26 and run `{rerun}`"
        )
    with tempfile.TemporaryDirectory() as tmp:  # outside any module: the repo's go.mod cannot interfere
        res = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            capture_output=True, text=True, cwd=tmp, check=False,
            env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on", "GOTOOLCHAIN": "local"},
        )  # fmt: skip
    try:
        info = json.loads(res.stdout)
    except json.JSONDecodeError:
        info = {}
    if res.returncode != 0 or not info.get("Dir"):
        detail = info.get("Error") or res.stderr.strip() or "no Dir in output"
        raise ClusterError(
            f"cannot locate {module}@{version} in the Go module cache ({detail[:200]}); "
            f"run `{rerun}` (it downloads the module) and retry"
        )
    return Path(info["Dir"])
