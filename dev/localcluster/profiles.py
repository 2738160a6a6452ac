"""Node profiles: which simulated nodes a cluster gets, declared in profiles/<name>.yaml.

A profile is a list of node pools. Every pool gives `count` nodes named <pool>-<index>, spread
round-robin over its zones, with the pool's labels, taints and capacity (allocatable defaults to
capacity). A `defaults` mapping at the top is merged under every pool (labels and capacity key by key).
One pool may be `scalable: true`: `up --nodes N` (or $PHALANX_CLUSTER_NODES) then sets its count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from localcluster.errors import ClusterError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
NODES_ENV = "PHALANX_CLUSTER_NODES"

# Marks every node this package creates: kwok manages exactly the nodes carrying the annotation.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
POOL_LABEL = "sim.phalanx.dev/pool"

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
REQUIRED_CAPACITY = ("cpu", "memory", "pods")
_POOL_KEYS = {"name", "count", "zones", "labels", "annotations", "taints", "capacity", "allocatable", "scalable"}
_TOP_KEYS = {"description", "defaults", "pools", "realNodes", "featureGates", "runtimeConfig"}
_GATE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_API_VERSION = re.compile(r"^[a-z0-9.-]+/v[0-9]+((alpha|beta)[0-9]+)?$")
_DEFAULT_KEYS = {"zones", "labels", "annotations", "capacity"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def manifest(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    capacity: Mapping[str, str]
    zones: tuple[str, ...] = ("zone-a",)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable: Mapping[str, str] | None = None
    scalable: bool = False

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    pools: tuple[NodePool, ...]
    # Real nodes (containerd + kubelet, dev/localcluster/realnode.py) next to the simulated pools.
    real_nodes: int = 0
    # --feature-gates of the apiserver, scheduler and controller manager (e.g. GangScheduling: true), and the
    # apiserver's --runtime-config (API versions served beyond the defaults, e.g. scheduling.k8s.io/v1alpha2).
    feature_gates: Mapping[str, bool] = field(default_factory=dict)
    runtime_config: tuple[str, ...] = ()

    def node_names(self) -> list[str]:
        return [n for pool in self.pools for n in pool.node_names()]


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str, nodes: int | None = None) -> Profile:
    """Load profiles/<name>.yaml; `nodes` (else $PHALANX_CLUSTER_NODES) resizes its scalable pool."""
    path = PROFILES_DIR / f"{name}.yaml"
    if not _DNS_LABEL.match(name) or not path.is_file():
        raise ClusterError(
            f"unknown profile {name!r}; choose one of: {', '.join(available_profiles())} (files in {PROFILES_DIR})"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ClusterError(f"profile {name!r} ({path}) is not valid YAML: {e}; fix the file") from e
    if nodes is None and os.environ.get(NODES_ENV):
        nodes = _int(os.environ[NODES_ENV], f"${NODES_ENV}")
    return parse_profile(name, data, nodes=nodes)


def parse_profile(name: str, data: Any, nodes: int | None = None) -> Profile:
    """Validate a profile document; every error names the profile, the pool and the field."""
    where = f"profile {name!r}"
    if not isinstance(data, dict):
        raise ClusterError(f"{where}: expected a mapping with a 'pools' list")
    _no_unknown(data, _TOP_KEYS, where)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ClusterError(f"{where}: 'defaults' must be a mapping")
    _no_unknown(defaults, _DEFAULT_KEYS, f"{where} defaults")
    raw_pools = data.get("pools")
    if not isinstance(raw_pools, list) or not raw_pools:
        raise ClusterError(f"{where}: 'pools' must be a non-empty list of node pools")
    pools = [_parse_pool(where, i, raw, defaults) for i, raw in enumerate(raw_pools)]
    names = [p.name for p in pools]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClusterError(f"{where}: duplicate pool name(s) {', '.join(dup)}; pool names must be unique")
    scalable = [p for p in pools if p.scalable]
    if len(scalable) > 1:
        raise ClusterError(f"{where}: only one pool may be 'scalable: true'")
    if nodes is not None:
        if nodes < 0:
            raise ClusterError(f"{where}: node count must be >= 0, got {nodes}")
        if not scalable:
            raise ClusterError(f"{where} has no 'scalable: true' pool, so --nodes cannot resize it; drop --nodes")
        pools = [replace(p, count=nodes) if p.scalable else p for p in pools]
    description = data.get("description") or ""
    real_nodes = _int(data.get("realNodes", 0), f"{where} realNodes")
    if real_nodes not in (0, 1):
        raise ClusterError(
            f"{where}: realNodes must be 0 or 1 (a real node owns this machine's bridge and cgroups), got {real_nodes}"
        )
    return Profile(
        name=name, description=str(description).strip(), pools=tuple(pools), real_nodes=real_nodes,
        feature_gates=_feature_gates(data.get("featureGates"), where),
        runtime_config=_runtime_config(data.get("runtimeConfig"), where),
    )  # fmt: skip


def _feature_gates(raw: Any, where: str) -> dict[str, bool]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and _GATE.match(k) for k in raw):
        raise ClusterError(f"{where}: 'featureGates' must map gate names (e.g. GangScheduling) to true or false")
    bad = sorted(k for k, v in raw.items() if not isinstance(v, bool))
    if bad:
        raise ClusterError(f"{where}: featureGates {', '.join(bad)} must be true or false")
    return dict(raw)


def _runtime_config(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(v, str) and _API_VERSION.match(v) for v in raw):
        raise ClusterError(f"{where}: 'runtimeConfig' must list API versions, e.g. scheduling.k8s.io/v1alpha2")
    return tuple(raw)


def _parse_pool(where: str, index: int, raw: Any, defaults: Mapping[str, Any]) -> NodePool:
    if not isinstance(raw, dict):
        raise ClusterError(f"{where}: pools[{index}] must be a mapping")
    pname = raw.get("name")
    at = f"{where} pool {pname!r}" if pname else f"{where} pools[{index}]"
    _no_unknown(raw, _POOL_KEYS, at)
    if not isinstance(pname, str) or not _DNS_LABEL.match(pname) or len(pname) > 50:
        raise ClusterError(f"{at}: 'name' must be a lowercase DNS label (a-z, 0-9, '-') of at most 50 chars")
    count = _int(raw.get("count", 1), f"{at} 'count'")
    if count < 0:
        raise ClusterError(f"{at}: 'count' must be >= 0, got {count}")
    zones = raw.get("zones", defaults.get("zones", ["zone-a"]))
    if not isinstance(zones, list) or not zones or not all(isinstance(z, str) and z for z in zones):
        raise ClusterError(f"{at}: 'zones' must be a non-empty list of zone names")
    labels = _string_map({**(defaults.get("labels") or {}), **(raw.get("labels") or {})}, f"{at} labels")
    for k, v in labels.items():
        if not _QUALIFIED.match(k) or not _LABEL_VALUE.match(v):
            raise ClusterError(f"{at}: label {k}={v!r} is not a valid Kubernetes label")
    annotations = _string_map(
        {**(defaults.get("annotations") or {}), **(raw.get("annotations") or {})}, f"{at} annotations"
    )
    capacity = _quantities({**(defaults.get("capacity") or {}), **(raw.get("capacity") or {})}, f"{at} capacity")
    missing = [k for k in REQUIRED_CAPACITY if k not in capacity]
    if missing:
        raise ClusterError(f"{at}: capacity lacks {', '.join(missing)}; every node needs cpu, memory and pods")
    allocatable = None
    if raw.get("allocatable") is not None:
        allocatable = {**capacity, **_quantities(raw["allocatable"], f"{at} allocatable")}
    scalable = raw.get("scalable", False)
    if not isinstance(scalable, bool):
        raise ClusterError(f"{at}: 'scalable' must be true or false")
    return NodePool(
        name=pname,
        count=count,
        capacity=capacity,
        zones=tuple(zones),
        labels=labels,
        annotations=annotations,
        taints=tuple(_parse_taint(at, t) for t in raw.get("taints") or []),
        allocatable=allocatable,
        scalable=scalable,
    )


def _parse_taint(at: str, raw: Any) -> Taint:
    if not isinstance(raw, dict) or set(raw) - {"key", "value", "effect"} or "key" not in raw:
        raise ClusterError(f"{at}: each taint needs key, optional value, and effect ({', '.join(TAINT_EFFECTS)})")
    effect = raw.get("effect")
    if effect not in TAINT_EFFECTS:
        raise ClusterError(f"{at}: taint {raw['key']!r} has effect {effect!r}; use one of {', '.join(TAINT_EFFECTS)}")
    return Taint(key=str(raw["key"]), value=_scalar(raw.get("value", "")), effect=effect)


def _no_unknown(data: Mapping[str, Any], allowed: set[str], at: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ClusterError(
            f"{at}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )


def _scalar(v: Any) -> str:
    # YAML turns `true` and `8` into bool/int; Kubernetes wants the strings "true" and "8".
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    raise ClusterError(f"expected a scalar value, got {v!r}")


def _string_map(data: Any, at: str) -> dict[str, str]:
    if not isinstance(data, dict):
        raise ClusterError(f"{at}: expected a mapping")
    try:
        return {str(k): _scalar(v) for k, v in data.items()}
    except ClusterError as e:
        raise ClusterError(f"{at}: {e}") from e


def _quantities(data: Any, at: str) -> dict[str, str]:
    out = _string_map(data, at)
    for k, v in out.items():
        if not _QUANTITY.match(v):
            raise ClusterError(f"{at}: {k}={v!r} is not a Kubernetes quantity (e.g. 96, 500m, 1Ti, 8)")
    return out


def _int(v: Any, at: str) -> int:
    if isinstance(v, bool):
        raise ClusterError(f"{at} must be an integer, got {v!r}")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ClusterError(f"{at} must be an integer, got {v!r}") from None
