"""The jobs every subject runs, and the objects phalanx creates for them (built by phalanx's own pure
builders, so the limit baseline creates exactly the same Service and pods)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from phalanx.api.models import API_VERSION, KIND, TrainingJobSpec
from phalanx.core import names
from phalanx.core.gang import Gang
from phalanx.core.pods import build_pod, build_service

IMAGE = "trainer:bench"
COMMAND = ["python", "-m", "train"]
GPUS_PER_WORKER = 1  # 8 workers fill one 8-GPU node; 1000 live 8-worker jobs fill 1000 nodes
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
KUBEFLOW_CONTAINER = "pytorch"  # the container name PyTorchJob requires


@dataclass(frozen=True)
class JobSpec:
    """One benchmark job: `workers` pods of GPUS_PER_WORKER GPU each; pod annotations (sim outcomes)."""

    name: str
    workers: int
    annotations: dict[str, str] = field(default_factory=dict)
    restart: bool = False  # allow retryable failures (recovery scenario)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers, "annotations": self.annotations, "restart": self.restart}

    @staticmethod
    def from_json(d: dict[str, Any]) -> JobSpec:
        return JobSpec(d["name"], int(d["workers"]), dict(d.get("annotations") or {}), bool(d.get("restart")))


def pytorch_training_job(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    """A PyTorch TrainingJob manifest; `spec` adds to (or replaces) framework and replicas."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"framework": "pytorch", "replicas": replicas, **spec},
    }


def training_job(ns: str, job: JobSpec) -> dict[str, Any]:
    """The TrainingJob a user submits (phalanx and the limit baseline)."""
    body = pytorch_training_job(
        job.name,
        job.workers,
        resources={"gpus": GPUS_PER_WORKER},
        runPolicy={"backoffLimit": 3},
        template={
            "metadata": {"annotations": dict(job.annotations)},
            "spec": {"containers": [{"name": names.TRAINER_CONTAINER, "image": IMAGE, "command": COMMAND}]},
        },
    )
    body["metadata"]["namespace"] = ns
    return body


def gang_of(body: dict[str, Any], attempt: int = 1) -> Gang:
    """The Gang phalanx would build for a stored TrainingJob (its spec as the apiserver defaulted it)."""
    meta = body["metadata"]
    spec = TrainingJobSpec.model_validate(body["spec"])
    return Gang(meta["name"], meta["namespace"], meta["uid"], spec, attempt)


def phalanx_objects(body: dict[str, Any], attempt: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(Service, pods) exactly as phalanx's reconcile creates them for this job and attempt."""
    gang = gang_of(body, attempt)
    return build_service(gang), [build_pod(gang, i) for i in range(gang.replicas)]


def pytorch_job(ns: str, job: JobSpec) -> dict[str, Any]:
    """The equivalent Kubeflow PyTorchJob: Master x1 + Worker x(n-1) = n pods whose spec is phalanx's
    pod spec (same requests, tolerations, affinity, security context, volumes) minus what is
    phalanx-specific (scheduling gate, env contract, hostname/subdomain)."""
    gang = Gang(job.name, ns, "00000000-0000-0000-0000-000000000000", _spec(job), 1)
    pod = build_pod(gang, 0)
    spec = copy.deepcopy(pod["spec"])
    spec.pop("schedulingGates", None)
    for key in ("hostname", "subdomain", "restartPolicy"):
        spec.pop(key, None)
    container = spec["containers"][0]
    container["name"] = KUBEFLOW_CONTAINER
    container.pop("env", None)
    container["ports"] = [p for p in container.get("ports", []) if p.get("name") != "metrics"]
    for term in spec["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]:
        term["podAffinityTerm"]["labelSelector"] = {"matchLabels": {KUBEFLOW_JOB_LABEL: job.name}}
    template = {"metadata": {"annotations": dict(job.annotations)}, "spec": spec}
    policy = "ExitCode" if job.restart else "Never"
    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": policy, "template": copy.deepcopy(template)},
    }
    if job.workers > 1:
        replicas["Worker"] = {"replicas": job.workers - 1, "restartPolicy": policy, "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": job.name, "namespace": ns},
        "spec": {"runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3}, "pytorchReplicaSpecs": replicas},
    }


def _spec(job: JobSpec) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(training_job("x", job)["spec"])
