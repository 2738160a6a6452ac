"""Node manifests for kwok, a readiness predicate, and helpers for tests that want extra nodes.

Capacity and allocatable are set in the Node's status at create time: the apiserver keeps a Node's
status on create (later it is only writable through the status subresource), and kwok's
node-initialize stage keeps whatever capacity it finds.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from localcluster.errors import ClusterError
from localcluster.profiles import KWOK_ANNOTATION, POOL_LABEL, NodePool, Profile, Taint

NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def node_ip(serial: int) -> str:
    """Distinct InternalIP per node (10.128.0.0/10): kwok gives each pod its node's IP as hostIP."""
    serial %= 1 << 22
    return f"10.{128 + (serial >> 16)}.{(serial >> 8) & 255}.{serial & 255}"


def node_manifest(pool: NodePool, index: int, serial: int | None = None) -> dict[str, Any]:
    """Manifest of node <pool>-<index>; `serial` (unique across the cluster) picks its InternalIP."""
    name = f"{pool.name}-{index}"
    if serial is None:
        # Nodes added by tests: an address derived from the name, away from the profiles' low range.
        serial = (1 << 21) + zlib.crc32(name.encode()) % (1 << 21)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool.name,
        "topology.kubernetes.io/zone": pool.zones[index % len(pool.zones)],
        **pool.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], **pool.annotations},
        },
        "spec": {"taints": [t.manifest() for t in pool.taints]} if pool.taints else {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip(serial)}, {"type": "Hostname", "address": name}],
            "capacity": dict(pool.capacity),
            "allocatable": dict(pool.allocatable if pool.allocatable is not None else pool.capacity),
        },
    }


def pool_manifests(pool: NodePool) -> list[dict[str, Any]]:
    return [node_manifest(pool, i) for i in range(pool.count)]


def profile_manifests(profile: Profile) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pool in profile.pools:
        out.extend(node_manifest(pool, i, serial=len(out) + 1) for i in range(pool.count))
    return out


def is_ready(node: Mapping[str, Any]) -> bool:
    """Ready=True and no not-ready/unreachable taint left (node in camelCase dict form)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = (node.get("spec") or {}).get("taints") or []
    return ready and not any(t.get("key") in NOT_READY_TAINTS for t in taints)


def gpu_pool(
    name: str,
    count: int = 1,
    product: str = "NVIDIA-A100-SXM4-80GB",
    gpus: int = 8,
    zones: Iterable[str] = ("us-central1-a",),
    taint: bool = True,
    extra_labels: Mapping[str, str] | None = None,
) -> NodePool:
    """A GPU pool like the default profile's, of another product (for tests that add nodes)."""
    labels = {
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.present": "true",
        **(extra_labels or {}),
    }
    return NodePool(
        name=name,
        count=count,
        zones=tuple(zones),
        labels=labels,
        taints=(Taint("nvidia.com/gpu", "present", "NoSchedule"),) if taint else (),
        capacity={"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(gpus)},
    )


def add_nodes(core_v1: Any, pool: NodePool, wait: bool = True, timeout: float = 60.0) -> list[str]:
    """Create the pool's nodes through a kubernetes.client.CoreV1Api; by default wait until Ready.

    Example: add_nodes(core_v1, gpu_pool("a100", count=2)) -> ["a100-0", "a100-1"].
    Pair with delete_nodes() in the test's teardown: nodes are cluster-wide and outlive namespaces.
    """
    names = []
    for manifest in pool_manifests(pool):
        core_v1.create_node(body=manifest)
        names.append(manifest["metadata"]["name"])
    if wait:
        wait_nodes_ready(core_v1, names, timeout=timeout)
    return names


def wait_nodes_ready(core_v1: Any, names: Iterable[str], timeout: float = 60.0) -> None:
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        for node in core_v1.list_node().items:
            if node.metadata.name in pending and is_ready(core_v1.api_client.sanitize_for_serialization(node)):
                pending.discard(node.metadata.name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"nodes not Ready after {timeout:.0f}s: {', '.join(sorted(pending))}; is kwok running? "
                "(see its log in the cluster dir's logs/kwok.log)"
            )
        time.sleep(0.25)


def delete_nodes(core_v1: Any, names: Iterable[str]) -> None:
    from kubernetes.client.exceptions import ApiException

    for name in names:
        try:
            core_v1.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise
