"""Deterministic names, labels and annotations of the objects phalanx creates."""

from __future__ import annotations

import re
from typing import Final

LABEL_JOB: Final = "phalanx.dev/job-name"
LABEL_ROLE: Final = "phalanx.dev/role"
LABEL_INDEX: Final = "phalanx.dev/replica-index"
LABEL_ATTEMPT: Final = "phalanx.dev/attempt"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "phalanx"
# The field manager of the operator's status writes (metadata.managedFields names who wrote each field).
FIELD_MANAGER: Final = "phalanx-operator"
ANNOTATION_WORLD_SIZE: Final = "phalanx.dev/world-size"
ANNOTATION_REPLICAS: Final = "phalanx.dev/replicas"
GANG_GATE: Final = "phalanx.dev/gang"
ROLE_WORKER: Final = "worker"
TRAINER_CONTAINER: Final = "trainer"
SHM_VOLUME: Final = "dshm"
CHECKPOINT_VOLUME: Final = "checkpoints"
POD_INFO_VOLUME: Final = "phalanx-pod-info"  # restartMode InPlace: the attempt label, as a file
POD_INFO_DIR: Final = "/etc/phalanx/pod"
DNS_LABEL_MAX: Final = 63


def hostname(job: str, index: int) -> str:
    """A rank's hostname, the same in every attempt: peers find it as <hostname>.<service>."""
    return f"{job}-{ROLE_WORKER}-{index}"


def pod_name(job: str, index: int, attempt: int) -> str:
    """A pod's name differs per attempt, so a delete by name that arrives late (from anyone: kwok v0.8.0
    deletes by name, a user's kubectl, a stale replica) can only hit the old pod, never its successor."""
    return f"{job}-a{attempt}-{ROLE_WORKER}-{index}"


def attempt_name(job: str, attempt: int) -> str:
    """<job>-a<attempt>, cut to a DNS label: the per-attempt Kueue Workload, and Workload and PodGroup."""
    suffix = f"-a{attempt}"
    return re.sub(r"-+$", "", job[: DNS_LABEL_MAX - len(suffix)]) + suffix


def service_name(job: str) -> str:
    return job


def checkpoint_claim_name(job: str) -> str:
    return f"{job}-checkpoints"


def pod_dns(job: str, namespace: str, index: int) -> str:
    """The stable DNS name the headless Service gives a rank's pod."""
    return f"{hostname(job, index)}.{service_name(job)}.{namespace}.svc"


def selector(job: str) -> str:
    return f"{LABEL_JOB}={job}"


def max_job_name_length(replicas: int) -> int:
    """A rank's hostname <job>-worker-<index> must fit a DNS label."""
    return DNS_LABEL_MAX - len(f"-{ROLE_WORKER}-{replicas - 1}")
