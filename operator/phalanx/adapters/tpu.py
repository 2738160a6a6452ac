"""TensorFlow on a GKE TPU slice: one pod per TPU VM host, placed by GKE's TPU node labels.

Cannot run here (no TPUs); the placement and env are built the way GKE's TPU webhook does and are
checked against the real scheduler with simulated TPU nodes.
"""

from __future__ import annotations

import math
from typing import Any

from phalanx import contract
from phalanx.adapters.base import EnvVar, Port, env_var
from phalanx.api.models import Framework, Strategy, TPUResources, TrainingJobSpec
from phalanx.core.gang import Gang

TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
# v5e and v6e VMs hold up to 8 chips in a single-host slice and 4 per host in multi-host slices;
# v4 and v5p hosts hold 4 chips.
_SINGLE_HOST_8 = ("tpu-v5-lite", "tpu-v6e")
TPU_WORKER_PORT = 8471


def chips(topology: str) -> int:
    return math.prod(int(d) for d in topology.split("x"))


def chips_per_host(tpu: TPUResources) -> int:
    if tpu.chips_per_host:
        return tpu.chips_per_host
    total = chips(tpu.topology)
    if tpu.accelerator.startswith(_SINGLE_HOST_8) and total <= 8:
        return total
    return min(total, 4)


def hosts(tpu: TPUResources) -> int:
    return max(1, chips(tpu.topology) // chips_per_host(tpu))


class TensorFlowTPU:
    framework = Framework.TENSORFLOW
    strategy = Strategy.TPU

    def validate(self, spec: TrainingJobSpec) -> list[str]:
        tpu = spec.resources.tpu
        if tpu is None:
            return ["spec.resources.tpu: strategy tpu needs resources.tpu"]
        problems = []
        total, per_host = chips(tpu.topology), chips_per_host(tpu)
        if total % per_host:
            problems.append(
                f"spec.resources.tpu: topology {tpu.topology} has {total} chips, "
                f"not a multiple of {per_host} chips per host"
            )
        elif spec.replicas != hosts(tpu):
            problems.append(
                f"spec.replicas: TPU topology {tpu.topology} on {tpu.accelerator} is {hosts(tpu)} host(s) "
                f"of {per_host} chips, so replicas must be {hosts(tpu)}, not {spec.replicas}"
            )
        return problems

    def env(self, gang: Gang, index: int) -> list[EnvVar]:
        tpu = gang.spec.resources.tpu
        assert tpu is not None
        return [
            env_var(contract.TPU_WORKER_ID, index),
            env_var(contract.TPU_WORKER_HOSTNAMES, ",".join(gang.hosts())),
            env_var(contract.TPU_ACCELERATOR_TYPE, tpu.accelerator),
            env_var(contract.TPU_TOPOLOGY, tpu.topology),
        ]

    def ports(self) -> list[Port]:
        return [{"name": "tpu-worker", "containerPort": TPU_WORKER_PORT, "protocol": "TCP"}]

    def pod_overrides(self, gang: Gang) -> dict[str, Any]:
        tpu = gang.spec.resources.tpu
        assert tpu is not None
        per_host = str(chips_per_host(tpu))
        return {
            "nodeSelector": {ACCELERATOR_LABEL: tpu.accelerator, TOPOLOGY_LABEL: tpu.topology},
            "tolerations": [{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {TPU_RESOURCE: per_host}, "limits": {TPU_RESOURCE: per_host}},
        }
