"""TensorFlow on a GKE TPU slice: one pod per TPU VM host, placed by GKE's TPU node labels.

Cannot run here (no TPUs); the placement and env are built the way GKE's TPU webhook does and are
checked against the real scheduler with simulated TPU nodes.

Hosts per slice (GKE's TPU planning tables): a slice of `topology` has prod(topology) chips.
Slices of up to 4 chips are one host. v5e and v6e slices of 2x4 come two ways: one 8-chip host
(ct5lp-hightpu-8t, ct6e-standard-8t) or two 4-chip hosts (the -4t machine types); which one a
node pool has is not in the topology, so either replica count is accepted (or chipsPerHost says).
Every other multi-host slice has 4 chips per host.
"""

from __future__ import annotations

import math
from typing import Any

from phalanx import contract
from phalanx.api.frameworks import Framework, Strategy
from phalanx.api.models import TPUResources, TrainingJobSpec
from phalanx.core import names
from phalanx.core.frameworks.base import EnvVar, Port, env_var
from phalanx.core.gang import Gang

TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
NODE_POOL_LABEL = "cloud.google.com/gke-nodepool"  # GKE gives each multi-host slice a node pool of its own
# The TensorFlow TPU worker's gRPC port: TPUClusterResolver dials grpc://<host>:8470 on every host.
TPU_WORKER_PORT = 8470
# The TPU runtime's port between the hosts of a multi-host slice (GKE's multi-host examples open it).
TPU_RUNTIME_PORT = 8471
# Accelerators whose 2x4 slice exists as one 8-chip host and as two 4-chip hosts.
_TWO_WAY_2X4 = ("tpu-v5-lite-podslice", "tpu-v5-lite-device", "tpu-v6e-slice")
# GKE accelerator label -> (Cloud TPU type prefix, TensorCores per chip, topology dimensions).
_KNOWN: dict[str, tuple[str, int, int]] = {
    "tpu-v4-podslice": ("v4", 2, 3),
    "tpu-v5p-slice": ("v5p", 2, 3),
    "tpu-v5-lite-podslice": ("v5litepod", 1, 2),
    "tpu-v5-lite-device": ("v5litepod", 1, 2),
    "tpu-v6e-slice": ("v6e", 1, 2),
}


def chips(topology: str) -> int:
    return math.prod(int(d) for d in topology.split("x"))


def layouts(tpu: TPUResources) -> list[int]:
    """The chips per host a slice of this accelerator and topology can have, preferred first."""
    if tpu.chips_per_host:
        return [tpu.chips_per_host]
    total = chips(tpu.topology)
    if total <= 4:
        return [total]
    if total == 8 and tpu.accelerator in _TWO_WAY_2X4:
        return [8, 4]
    return [4]


def chips_per_host(tpu: TPUResources, replicas: int | None = None) -> int:
    """google.com/tpu per pod: the layout whose host count is `replicas`, else the preferred one."""
    options = layouts(tpu)
    total = chips(tpu.topology)
    for per_host in options:
        if replicas is not None and total % per_host == 0 and total // per_host == replicas:
            return per_host
    return options[0]


def hosts(tpu: TPUResources, replicas: int | None = None) -> int:
    """Hosts of the slice, hence pods of the job (one per host)."""
    return max(1, chips(tpu.topology) // chips_per_host(tpu, replicas))


def accelerator_type(tpu: TPUResources) -> str:
    """The Cloud TPU type name libtpu and TPUClusterResolver use (v5litepod-8, v4-16), else the GKE label."""
    known = _KNOWN.get(tpu.accelerator)
    if known is None:
        return tpu.accelerator
    prefix, cores_per_chip, _ = known
    return f"{prefix}-{chips(tpu.topology) * cores_per_chip}"


def _host_options(tpu: TPUResources) -> str:
    total = chips(tpu.topology)
    parts = [f"{total // c} host(s) of {c} chips" for c in layouts(tpu) if total % c == 0]
    return " or ".join(parts)


class TensorFlowTPU:
    framework = Framework.TENSORFLOW
    strategy = Strategy.TPU

    def validate(self, spec: TrainingJobSpec) -> list[str]:
        tpu = spec.resources.tpu
        if tpu is None:
            return ["spec.resources.tpu: strategy tpu needs resources.tpu"]
        total = chips(tpu.topology)
        known = _KNOWN.get(tpu.accelerator)
        dims = len(tpu.topology.split("x"))
        if known is not None and known[2] != dims:
            example = "2x2x2" if known[2] == 3 else "2x4"
            return [
                f"spec.resources.tpu.topology: {tpu.accelerator} slices have {known[2]}-D topologies "
                f"such as {example}, not {tpu.topology}"
            ]
        if tpu.chips_per_host and (tpu.chips_per_host > total or total % tpu.chips_per_host):
            return [
                f"spec.resources.tpu: topology {tpu.topology} has {total} chips, "
                f"not a multiple of chipsPerHost={tpu.chips_per_host}"
            ]
        valid = sorted({total // c for c in layouts(tpu)})
        if spec.replicas not in valid:
            must = " or ".join(str(v) for v in valid)
            return [
                f"spec.replicas: TPU topology {tpu.topology} on {tpu.accelerator} is {_host_options(tpu)} "
                f"(one pod per host), so replicas must be {must}, not {spec.replicas}"
            ]
        return []

    def env(self, gang: Gang, index: int) -> list[EnvVar]:
        tpu = gang.spec.resources.tpu
        assert tpu is not None
        return [
            env_var(contract.TPU_WORKER_ID, index),
            env_var(contract.TPU_WORKER_HOSTNAMES, ",".join(gang.hosts())),
            env_var(contract.TPU_ACCELERATOR_TYPE, accelerator_type(tpu)),
            env_var(contract.TPU_TOPOLOGY, tpu.topology),
        ]

    def ports(self) -> list[Port]:
        return [
            {"name": "tpu-worker", "containerPort": TPU_WORKER_PORT, "protocol": "TCP"},
            {"name": "tpu-runtime", "containerPort": TPU_RUNTIME_PORT, "protocol": "TCP"},
        ]

    def pod_overrides(self, gang: Gang) -> dict[str, Any]:
        tpu = gang.spec.resources.tpu
        assert tpu is not None
        per_host = str(chips_per_host(tpu, gang.replicas))
        overrides: dict[str, Any] = {
            "nodeSelector": {ACCELERATOR_LABEL: tpu.accelerator, TOPOLOGY_LABEL: tpu.topology},
            "tolerations": [{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {TPU_RESOURCE: per_host}, "limits": {TPU_RESOURCE: per_host}},
        }
        if gang.replicas > 1:
            # The hosts of a multi-host slice are one node pool, joined by the chips' interconnect: two
            # pools of the same accelerator and topology are two slices, and a gang split across them
            # cannot run. A required rule; gang admission picks a pool with room for every host first.
            selector = {names.LABEL_JOB: gang.job, names.LABEL_ATTEMPT: str(gang.attempt)}
            term = {"labelSelector": {"matchLabels": selector}, "topologyKey": NODE_POOL_LABEL}
            overrides["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        return overrides
