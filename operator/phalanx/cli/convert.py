"""`kubectl phalanx convert FILE`: a Kubeflow PyTorchJob or TFJob (kubeflow.org/v1) as a TrainingJob.

Pure: manifest in, TrainingJob and notes out. What maps:

* replicas: Master (or TF's Chief) + Worker replicas; phalanx runs one template for every pod.
* `nprocPerNode` (or the older `elasticPolicy.nProcPerNode`) -> procsPerPod; `nvidia.com/gpu` limits of
  the container -> resources.gpus (phalanx sets the GPU request and limit itself).
* runPolicy: backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished, cleanPodPolicy, suspend,
  schedulingPolicy.priorityClass; a replica's restartPolicy -> runPolicy.restartOn; elasticPolicy's
  minReplicas/maxReplicas -> elastic; the Kueue queue label -> scheduling.queueName; runPolicy.managedBy
  -> managedBy (kueue.x-k8s.io/multikueue stays MultiKueue's; Kubeflow's own controller becomes phalanx).

Everything else is listed as a note with the reason it was not mapped. A parameter-server TFJob is
refused: phalanx's TensorFlow strategies are all-reduce (MultiWorkerMirrored) and TPU. The result is
validated with the operator's own model and checks before it is printed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from phalanx.api.models import API_VERSION, KIND, TrainingJobSpec
from phalanx.cli.errors import CliError
from phalanx.core import names
from phalanx.core.pods import GPU_RESOURCE
from phalanx.core.validation import validate

KUBEFLOW_GROUP = "kubeflow.org"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kubeflow's required container names, and the ports it adds for its own rendezvous.
CONTAINER = {"PyTorchJob": "pytorch", "TFJob": "tensorflow"}
KUBEFLOW_PORTS = {"pytorchjob-port", "tfjob-port"}
RESTART_ON = {"OnFailure": "always", "Always": "always", "ExitCode": "retryable", "Never": "never"}
KUBEFLOW_CONTROLLER = "kubeflow.org/training-operator"  # Kubeflow's own value of runPolicy.managedBy
RUN_POLICY = ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "cleanPodPolicy", "suspend")
WHY = {
    # Run policy and scheduling.
    "runPolicy.schedulingPolicy.minAvailable": "phalanx gangs are all-or-nothing: every pod is admitted together",
    "runPolicy.schedulingPolicy.queue": "a Volcano queue; phalanx admits gangs itself or defers to a Kueue "
    f"LocalQueue (scheduling.queueName, from the {KUEUE_QUEUE_LABEL} label)",
    "runPolicy.schedulingPolicy.minResources": "phalanx's gang admission computes the gang's resources itself",
    "runPolicy.schedulingPolicy.scheduleTimeoutSeconds": "no scheduling timeout; the nearest is "
    "runPolicy.startupDeadlineSeconds (default 900 s, counted from admission)",
    # PyTorch elastic.
    "elasticPolicy.rdzvBackend": "phalanx sets MASTER_ADDR/MASTER_PORT (static rendezvous on pod 0); "
    "resizing restarts the gang at the new world size",
    "elasticPolicy.rdzvHost": "the rendezvous is pod 0 of the gang (MASTER_ADDR)",
    "elasticPolicy.rdzvPort": "the rendezvous port is MASTER_PORT=29500",
    "elasticPolicy.rdzvId": "one rendezvous per attempt (PHALANX_ATTEMPT)",
    "elasticPolicy.rdzvConf": "no torchrun rendezvous options are passed",
    "elasticPolicy.standalone": "the rendezvous is pod 0 of the gang (MASTER_ADDR)",
    "elasticPolicy.maxRestarts": "phalanx restarts the whole gang from its checkpoint, counted against "
    "runPolicy.backoffLimit, instead of torchrun's in-place restarts",
    "elasticPolicy.metrics": "no built-in HorizontalPodAutoscaler; point one at the scale subresource "
    "(kubectl scale tj/NAME)",
    # TFJob.
    "tfReplicaSpecs.Evaluator": "phalanx runs no side evaluator pod; evaluate in the training loop or in a Job",
    "successPolicy": "a TrainingJob succeeds when all its pods exit 0",
    "enableDynamicWorker": "workers are a fixed gang; resizing restarts it at the new world size",
}


@dataclass
class Conversion:
    job: dict[str, Any]
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source field, why it was not mapped)
    changes: list[str] = field(default_factory=list)  # mapped, but behaving differently: worth knowing


def _template_of(replica: Mapping[str, Any], role: str) -> dict[str, Any]:
    template = replica.get("template")
    if not isinstance(template, dict) or not isinstance((template.get("spec") or {}).get("containers"), list):
        raise CliError(f"{role}.template.spec.containers is missing")
    return copy.deepcopy(template)


def _count(replica: Mapping[str, Any], role: str, default: int = 1) -> int:
    value = replica.get("replicas", default)
    if not isinstance(value, int) or value < 0:
        raise CliError(f"{role}.replicas must be a non-negative integer, not {value!r}")
    return value


def _gpus(container: dict[str, Any], where: str, notes: list[tuple[str, str]]) -> int:
    """The container's nvidia.com/gpu, moved out of its resources (phalanx sets it from resources.gpus)."""
    found = 0
    resources = container.get("resources") or {}
    for part in ("limits", "requests"):
        values = resources.get(part) or {}
        if GPU_RESOURCE in values:
            raw = values.pop(GPU_RESOURCE)
            try:
                found = max(found, int(str(raw)))
            except ValueError:
                raise CliError(f"{where}.resources.{part}.{GPU_RESOURCE}: {raw!r} is not a whole number") from None
            if not values:
                del resources[part]
    for other in sorted({k for part in resources.values() if isinstance(part, dict) for k in part}):
        if other.endswith("/gpu") or other.startswith("amd.com/"):
            notes.append(
                (
                    f"{where}.resources.*.{other}",
                    "phalanx requests NVIDIA GPUs only (resources.gpus); the value is kept in the container as it is",
                )
            )
    if not resources and "resources" in container:
        del container["resources"]
    return found


def _trainer(template: dict[str, Any], kind: str, where: str, notes: list[tuple[str, str]]) -> int:
    """Rename Kubeflow's container to `trainer`, drop Kubeflow's port, move GPUs out; the GPUs per pod."""
    containers = template["spec"]["containers"]
    wanted = CONTAINER[kind]
    main = next((c for c in containers if c.get("name") == wanted), None)
    if main is None:
        raise CliError(f"{where}.template.spec.containers has no container named {wanted!r} (Kubeflow's trainer)")
    if any(c.get("name") == names.TRAINER_CONTAINER for c in containers if c is not main):
        raise CliError(f"{where}: a container other than {wanted!r} is already named 'trainer'")
    main["name"] = names.TRAINER_CONTAINER
    ports = main.get("ports") or []
    kept = [p for p in ports if p.get("name") not in KUBEFLOW_PORTS]
    if len(kept) != len(ports):
        notes.append(
            (
                f"{where}.template.spec.containers[{wanted}].ports",
                "Kubeflow's rendezvous port is not used: phalanx sets MASTER_PORT=29500 (PyTorch) or "
                "port 2222 in TF_CONFIG (TensorFlow)",
            )
        )
        if kept:
            main["ports"] = kept
        else:
            main.pop("ports", None)
    if template["spec"].pop("restartPolicy", None) is not None:
        notes.append(
            (
                f"{where}.template.spec.restartPolicy",
                "pods run with restartPolicy Never: phalanx restarts whole gangs, never single ranks",
            )
        )
    return _gpus(main, f"{where}.template.spec.containers[{wanted}]", notes)


def _restart_on(specs: Mapping[str, Mapping[str, Any]], notes: list[tuple[str, str]]) -> str | None:
    policies = {role: r.get("restartPolicy") for role, r in specs.items() if r.get("restartPolicy")}
    mapped = {role: RESTART_ON.get(str(p)) for role, p in policies.items()}
    for role, value in mapped.items():
        if value is None:
            raise CliError(f"{role}.restartPolicy: {policies[role]!r} is not one of {', '.join(RESTART_ON)}")
    chosen = sorted({v for v in mapped.values() if v})
    if len(chosen) > 1:
        # One policy per gang: the most permissive the replicas asked for.
        order = ["never", "retryable", "always"]
        pick = max(chosen, key=order.index)
        notes.append(("*.restartPolicy", f"the replicas differ ({policies}); a gang has one policy: restartOn={pick}"))
        return pick
    return chosen[0] if chosen else None


def _run_policy(source: Mapping[str, Any], run: dict[str, Any], scheduling: dict[str, Any], notes: list[Any]) -> None:
    for key in RUN_POLICY:
        if source.get(key) is not None:
            run[key] = source[key]
    policy = source.get("schedulingPolicy") or {}
    if policy.get("priorityClass"):
        scheduling["priorityClassName"] = policy["priorityClass"]
    for key in ("minAvailable", "queue", "minResources", "scheduleTimeoutSeconds"):
        if policy.get(key) is not None:
            notes.append((f"runPolicy.schedulingPolicy.{key}", WHY[f"runPolicy.schedulingPolicy.{key}"]))
    for key, value in source.items():
        if key not in (*RUN_POLICY, "schedulingPolicy", "managedBy") and value is not None:
            notes.append((f"runPolicy.{key}", WHY.get(f"runPolicy.{key}", "no TrainingJob field of that meaning")))


def _templates_differ(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a != b


def _procs_per_pod(value: Any, notes: list[tuple[str, str]]) -> int | str | None:
    if value is None:
        return None
    text = str(value)
    if text in ("auto", "gpu"):
        return "auto"  # phalanx's auto: one process per GPU (one without GPUs)
    if text == "cpu":
        notes.append(
            (
                "nprocPerNode",
                "'cpu' (one process per CPU) has no equivalent; procsPerPod is auto (one per GPU, one without GPUs)",
            )
        )
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise CliError(f"nprocPerNode: {value!r} is not auto, gpu, cpu or a positive integer")


def _pytorch(spec: Mapping[str, Any], notes: list[tuple[str, str]], changes: list[str]) -> dict[str, Any]:
    replicas_spec = spec.get("pytorchReplicaSpecs")
    if not isinstance(replicas_spec, dict) or not replicas_spec:
        raise CliError("spec.pytorchReplicaSpecs is missing: not a PyTorchJob")
    unknown = set(replicas_spec) - {"Master", "Worker"}
    if unknown:
        raise CliError(f"spec.pytorchReplicaSpecs has {', '.join(sorted(unknown))}: a PyTorchJob has Master and Worker")
    master, worker = replicas_spec.get("Master") or {}, replicas_spec.get("Worker") or {}
    masters = _count(master, "Master") if master else 0
    if masters > 1:
        raise CliError(f"Master.replicas is {masters}: a PyTorchJob has at most one Master")
    workers = _count(worker, "Worker") if worker else 0
    out: dict[str, Any] = {"framework": "pytorch", "replicas": masters + workers}
    elastic = dict(spec.get("elasticPolicy") or {})
    procs = _procs_per_pod(spec.get("nprocPerNode", elastic.pop("nProcPerNode", None)), notes)
    if procs is not None:
        out["procsPerPod"] = procs
    if elastic:
        bounds = {k: elastic.pop(k) for k in ("minReplicas", "maxReplicas") if elastic.get(k) is not None}
        if bounds:
            # Kubeflow's bounds count the workers; the Master, if any, is one more pod.
            out["elastic"] = {k: v + masters for k, v in bounds.items()}
            out["elastic"].setdefault("maxReplicas", max(out["replicas"], out["elastic"].get("minReplicas", 1)))
            if masters:
                changes.append("elasticPolicy bounds count workers in Kubeflow, pods in phalanx: the Master was added")
        for key, value in elastic.items():
            if value is not None:
                notes.append(
                    (f"elasticPolicy.{key}", WHY.get(f"elasticPolicy.{key}", "no TrainingJob field of that meaning"))
                )
    roles = {"Master": master, "Worker": worker}
    return {"out": out, "roles": {r: v for r, v in roles.items() if v}}


def _tensorflow(spec: Mapping[str, Any], notes: list[tuple[str, str]], changes: list[str]) -> dict[str, Any]:
    replicas_spec = spec.get("tfReplicaSpecs")
    if not isinstance(replicas_spec, dict) or not replicas_spec:
        raise CliError("spec.tfReplicaSpecs is missing: not a TFJob")
    if "PS" in replicas_spec:
        raise CliError(
            "a parameter-server TFJob (tfReplicaSpecs.PS) cannot be converted: phalanx runs TensorFlow with "
            "MultiWorkerMirroredStrategy (all-reduce, every pod a worker) or TPUStrategy, not "
            "ParameterServerStrategy. Port the script to tf.distribute.MultiWorkerMirroredStrategy and drop the PS "
            "replicas, or keep this job on Kubeflow's training operator"
        )
    unknown = set(replicas_spec) - {"Chief", "Master", "Worker", "Evaluator"}
    if unknown:
        raise CliError(f"spec.tfReplicaSpecs has {', '.join(sorted(unknown))}: a TFJob has Chief, Worker and Evaluator")
    if replicas_spec.get("Evaluator"):
        notes.append(("tfReplicaSpecs.Evaluator", WHY["tfReplicaSpecs.Evaluator"]))
    chief_role = "Chief" if "Chief" in replicas_spec else "Master"
    chief = replicas_spec.get(chief_role) or {}
    chiefs = _count(chief, chief_role) if chief else 0
    if chiefs > 1:
        raise CliError(f"{chief_role}.replicas is {chiefs}: a TFJob has at most one {chief_role}")
    worker = replicas_spec.get("Worker") or {}
    workers = _count(worker, "Worker") if worker else 0
    if chiefs:
        changes.append(
            f"TF_CONFIG names every pod a worker: the {chief_role} becomes worker 0, which does the chief's work; "
            "code that tests task_type == 'chief' must test task_id == 0 instead"
        )
    for key in ("successPolicy", "enableDynamicWorker"):
        if spec.get(key):
            notes.append((key, WHY[key]))
    out: dict[str, Any] = {"framework": "tensorflow", "strategy": "multiWorkerMirrored", "replicas": chiefs + workers}
    roles = {chief_role: chief, "Worker": worker}
    return {"out": out, "roles": {r: v for r, v in roles.items() if v}}


def convert(manifest: Mapping[str, Any]) -> Conversion:
    kind = manifest.get("kind")
    api = str(manifest.get("apiVersion") or "")
    if kind not in CONTAINER or not api.startswith(f"{KUBEFLOW_GROUP}/"):
        raise CliError(f"not a Kubeflow PyTorchJob or TFJob: apiVersion {api or '(none)'}, kind {kind or '(none)'}")
    meta = manifest.get("metadata") or {}
    if not meta.get("name"):
        raise CliError(f"the {kind} has no metadata.name")
    spec = manifest.get("spec") or {}
    notes: list[tuple[str, str]] = []
    changes: list[str] = []
    parts = _pytorch(spec, notes, changes) if kind == "PyTorchJob" else _tensorflow(spec, notes, changes)
    out: dict[str, Any] = parts["out"]
    roles: dict[str, dict[str, Any]] = parts["roles"]
    if out["replicas"] < 1:
        raise CliError(f"the {kind} has no replicas: a TrainingJob needs at least one pod")
    templates = {role: _template_of(r, role) for role, r in roles.items()}
    # One template for every pod: the Worker's (the many), else the Master's/Chief's. Only its notes count.
    main_role = "Worker" if "Worker" in templates else next(iter(templates))
    gpus = {role: _trainer(t, str(kind), role, notes if role == main_role else []) for role, t in templates.items()}
    for role, template in templates.items():
        if role != main_role and (_templates_differ(template, templates[main_role]) or gpus[role] != gpus[main_role]):
            notes.append(
                (
                    f"{role}.template",
                    f"differs from the {main_role}'s; phalanx runs one template for every "
                    f"pod: the {main_role}'s is used",
                )
            )
    out["template"] = templates[main_role]
    if gpus[main_role]:
        out["resources"] = {"gpus": gpus[main_role]}
    run: dict[str, Any] = {}
    scheduling: dict[str, Any] = {}
    restart = _restart_on(roles, notes)
    if restart:
        run["restartOn"] = restart
    if any(r.get("restartPolicy") == "OnFailure" for r in roles.values()):
        changes.append(
            "restartPolicy OnFailure restarted a failed container in place; phalanx restarts the whole gang from "
            "its last checkpoint on any failure (restartOn: always), up to runPolicy.backoffLimit"
        )
    _run_policy(spec.get("runPolicy") or {}, run, scheduling, notes)
    managed_by = (spec.get("runPolicy") or {}).get("managedBy")
    if managed_by and managed_by != KUBEFLOW_CONTROLLER:
        out["managedBy"] = managed_by  # kueue.x-k8s.io/multikueue, or another controller's: kept as it is
    elif managed_by:
        changes.append(f"runPolicy.managedBy {KUBEFLOW_CONTROLLER} -> phalanx (spec.managedBy unset)")
    for key in spec:
        if key not in (
            "pytorchReplicaSpecs",
            "tfReplicaSpecs",
            "runPolicy",
            "elasticPolicy",
            "nprocPerNode",
            "successPolicy",
            "enableDynamicWorker",
        ):
            notes.append((key, "no TrainingJob field of that meaning"))
    labels = dict(meta.get("labels") or {})
    if labels.get(KUEUE_QUEUE_LABEL):
        scheduling["queueName"] = labels[KUEUE_QUEUE_LABEL]
    if run:
        out["runPolicy"] = run
    if scheduling:
        out["scheduling"] = scheduling
    job_meta: dict[str, Any] = {"name": meta["name"]}
    for key in ("namespace", "labels", "annotations"):
        if meta.get(key):
            job_meta[key] = copy.deepcopy(meta[key])
    _check(str(meta["name"]), out)
    return Conversion(
        job={"apiVersion": API_VERSION, "kind": KIND, "metadata": job_meta, "spec": out}, notes=notes, changes=changes
    )


def _check(name: str, spec: dict[str, Any]) -> None:
    """The operator's own model and checks: what the converted job would fail with is said now."""
    try:
        parsed = TrainingJobSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"the converted spec is not a valid TrainingJob: spec.{where}: {first['msg']}") from None
    problems = validate(name, parsed)
    if problems:
        raise CliError(f"the converted job would fail as InvalidSpec: {'; '.join(problems)}")
