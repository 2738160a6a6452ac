"""kwok's configuration: its stock Stages, read from the kwok module in the Go module cache, plus ours.

Standalone kwok ships no default stages; they live as YAML inside the kwok module (kustomize/stage/).
We read them at runtime from the module that build-binaries.sh already downloaded (same version as
the binary) instead of copying upstream files into this repo.
"""

from __future__ import annotations

from pathlib import Path

from localcluster import binaries
from localcluster.errors import ClusterError

OWN_STAGES_DIR = Path(__file__).resolve().parent / "stages"

# Stock stages, relative to the kwok module root. Node heartbeats use the lease variant because we
# run kwok with node leases (as kwokctl does): a lease renewal is far cheaper than a status write,
# and with leases the Node status only needs a refresh every ~10 min.
STOCK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def kwok_module_dir(version: str | None = None) -> Path:
    """Directory of sigs.k8s.io/kwok@<version> in the Go module cache (downloaded if absent)."""
    version = version or binaries.version_of("kwok")
    return binaries.go_module_dir("sigs.k8s.io/kwok", version, "kwok's stock stages", "make binaries")


def stage_documents(module_dir: Path) -> list[str]:
    docs = []
    for rel in STOCK_STAGES:
        path = module_dir / rel
        if not path.is_file():
            raise ClusterError(
                f"kwok stage {rel} not found in {module_dir}; is KWOK_VERSION in dev/versions.env right?"
            )
        docs.append(path.read_text())
    docs.extend(p.read_text() for p in sorted(OWN_STAGES_DIR.glob("*.yaml")))
    return docs


def write_kwok_config(path: Path) -> Path:
    # kwok's parallelism options stay at their defaults: with 1000 nodes, 16 players instead of 4
    # made no difference here (the apiserver, sharing 2 cores, is the bottleneck).
    docs = stage_documents(kwok_module_dir())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n---\n".join(d.strip() + "\n" for d in docs))
    return path
