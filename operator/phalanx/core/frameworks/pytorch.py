"""PyTorch DistributedDataParallel: the env torch.distributed and plain `torchrun` read."""

from __future__ import annotations

from typing import Any

from phalanx import contract
from phalanx.api.frameworks import Framework, Strategy
from phalanx.api.models import TrainingJobSpec
from phalanx.core.frameworks.base import EnvVar, Port, env_var
from phalanx.core.gang import Gang


class PyTorchDDP:
    framework = Framework.PYTORCH
    strategy = Strategy.DDP

    def validate(self, spec: TrainingJobSpec) -> list[str]:
        problems = []
        procs = spec.effective_procs_per_pod()
        if spec.resources.gpus and procs > spec.resources.gpus:
            problems.append(
                f"spec.procsPerPod: {procs} processes per pod but only {spec.resources.gpus} GPUs per pod; "
                "each DDP process needs its own GPU"
            )
        return problems

    def env(self, gang: Gang, index: int) -> list[EnvVar]:
        master = gang.host(0)
        port = contract.DEFAULT_MASTER_PORT
        env = [
            env_var(contract.MASTER_ADDR, master),
            env_var(contract.MASTER_PORT, port),
            env_var(contract.WORLD_SIZE, gang.world_size),
            env_var(contract.NODE_RANK, index),
            env_var(contract.LOCAL_WORLD_SIZE, gang.procs_per_pod),
            env_var(contract.PET_NNODES, gang.replicas),
            env_var(contract.PET_NPROC_PER_NODE, gang.procs_per_pod),
            env_var(contract.PET_NODE_RANK, index),
            env_var(contract.PET_MASTER_ADDR, master),
            env_var(contract.PET_MASTER_PORT, port),
        ]
        if gang.procs_per_pod == 1:
            # With several processes per pod, torchrun (or the runtime's spawner) assigns RANK per process.
            env.insert(3, env_var(contract.RANK, index))
        return env

    def ports(self) -> list[Port]:
        return [{"name": "torch-dist", "containerPort": contract.DEFAULT_MASTER_PORT, "protocol": "TCP"}]

    def pod_overrides(self, gang: Gang) -> dict[str, Any]:
        return {}
