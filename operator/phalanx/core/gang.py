"""A gang: one attempt of a job's pods, all started and restarted together."""

from __future__ import annotations

from dataclasses import dataclass

from phalanx.api.models import TrainingJobSpec
from phalanx.core import names


@dataclass(frozen=True)
class Gang:
    job: str
    namespace: str
    uid: str
    spec: TrainingJobSpec
    attempt: int
    # Nodes this attempt's pods must not run on (status.avoidedNodes): an unhealthy GPU or a straggler there.
    avoided_nodes: tuple[str, ...] = ()

    @property
    def replicas(self) -> int:
        return self.spec.replicas

    @property
    def procs_per_pod(self) -> int:
        return self.spec.effective_procs_per_pod()

    @property
    def world_size(self) -> int:
        return self.replicas * self.procs_per_pod

    def host(self, index: int) -> str:
        return names.pod_dns(self.job, self.namespace, index)

    def hosts(self) -> list[str]:
        return [self.host(i) for i in range(self.replicas)]
