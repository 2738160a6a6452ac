"""TensorFlow MultiWorkerMirroredStrategy: TF_CONFIG as Kubeflow and Volcano write it."""

from __future__ import annotations

import json
from typing import Any

from phalanx import contract
from phalanx.api.frameworks import Framework, Strategy
from phalanx.api.models import TrainingJobSpec
from phalanx.core.frameworks.base import EnvVar, Port, env_var
from phalanx.core.gang import Gang


def tf_config(gang: Gang, index: int) -> str:
    """All pods are workers; worker 0 is the chief (TF's rule when the cluster has no "chief" role)."""
    cluster = {"worker": [f"{host}:{contract.DEFAULT_TF_PORT}" for host in gang.hosts()]}
    return json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}, "environment": "cloud"},
        separators=(",", ":"),
    )


class TensorFlowMWMS:
    framework = Framework.TENSORFLOW
    strategy = Strategy.MULTI_WORKER_MIRRORED

    def validate(self, spec: TrainingJobSpec) -> list[str]:
        if spec.procs_per_pod not in ("auto", 1):
            return [
                "spec.procsPerPod: TensorFlow runs one process per pod (it uses all the pod's GPUs); "
                "set procsPerPod to auto or 1"
            ]
        return []

    def env(self, gang: Gang, index: int) -> list[EnvVar]:
        return [env_var(contract.TF_CONFIG, tf_config(gang, index))]

    def ports(self) -> list[Port]:
        return [{"name": "tf-grpc", "containerPort": contract.DEFAULT_TF_PORT, "protocol": "TCP"}]

    def pod_overrides(self, gang: Gang) -> dict[str, Any]:
        return {}
