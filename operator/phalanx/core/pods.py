"""Builders of the desired objects: the rank pods and the headless Service. Pure functions."""

from __future__ import annotations

import copy
from typing import Any

from phalanx import contract
from phalanx.api.models import API_VERSION, KIND, GangBackend, RestartMode
from phalanx.core import names
from phalanx.core.frameworks import adapter_for
from phalanx.core.frameworks.base import env_var
from phalanx.core.gang import Gang
from phalanx.core.model import Manifest

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# NCCL and DataLoader workers share memory through /dev/shm; the container default of 64 MiB breaks them.
DEFAULT_SHM = "8Gi"


def owner_reference(gang: Gang) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": gang.job,
        "uid": gang.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(gang: Gang) -> dict[str, str]:
    return {names.LABEL_JOB: gang.job, names.LABEL_MANAGED_BY: names.MANAGER}


def _gang_of_ours(gang: Gang) -> bool:
    """A gang that neither Kueue nor another scheduler admits."""
    s = gang.spec.scheduling
    return s.gang and not s.queue_name and not s.scheduler_name


def gated(gang: Gang) -> bool:
    """Built-in gang admission applies unless another admission system owns the job."""
    return _gang_of_ours(gang) and gang.spec.scheduling.gang_backend is not GangBackend.POD_GROUP


def pod_group_gang(gang: Gang) -> bool:
    """gangBackend PodGroup (core/podgroup.py): the kube-scheduler's gang admits the pods. The CRD refuses
    it with queueName, schedulerName or gang: false; checked again so that no older job is half-admitted."""
    return _gang_of_ours(gang) and gang.spec.scheduling.gang_backend is GangBackend.POD_GROUP


def held(gang: Gang) -> bool:
    """Pods are created behind the gang's scheduling gate: for built-in gang admission, and for Kueue
    (core/kueue.py), which admits a Workload for the whole gang before any pod may schedule."""
    return gated(gang) or bool(gang.spec.scheduling.queue_name)


PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


def node_preference(node: str) -> dict[str, Any]:
    """A preferred node-affinity term for the node admission planned: the scheduler follows the
    packing admission computed, yet a pod still goes wherever it fits if that node is taken meanwhile."""
    return {
        "weight": 100,
        "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]},
    }


def admitted_pod(pod: dict[str, Any], node: str) -> dict[str, Any]:
    """A gated pod as created when its whole gang was admitted before creation: no gate, and the
    planned node as a preference (what lifting its gate would have patched in)."""
    spec = {k: v for k, v in pod["spec"].items() if k != "schedulingGates"}
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    node_affinity[PREFERRED] = [*(node_affinity.get(PREFERRED) or []), node_preference(node)]
    affinity["nodeAffinity"] = node_affinity
    spec["affinity"] = affinity
    return {**pod, "spec": spec}


def phalanx_env(gang: Gang, index: int) -> list[dict[str, Any]]:
    spec = gang.spec
    env = [
        env_var(contract.JOB_NAME, gang.job),
        env_var(contract.NAMESPACE, gang.namespace),
        env_var(contract.FRAMEWORK, spec.framework.value),
        env_var(contract.STRATEGY, spec.effective_strategy().value),
        env_var(contract.ATTEMPT, gang.attempt),
        env_var(contract.REPLICA_INDEX, index),
        env_var(contract.REPLICAS, gang.replicas),
        env_var(contract.PROCS_PER_POD, gang.procs_per_pod),
        env_var(contract.METRICS_PORT, spec.metrics.port),
        env_var("PYTHONUNBUFFERED", "1"),
    ]
    ckpt = spec.checkpoint
    if ckpt is not None:
        env += [
            env_var(contract.CHECKPOINT_KEEP, ckpt.keep),
            env_var(contract.CHECKPOINT_INTERVAL_SECONDS, ckpt.interval_seconds),
        ]
        if ckpt.uri:
            env.append(env_var(contract.CHECKPOINT_URI, ckpt.uri))
            if ckpt.secret_ref:
                env += [
                    {"name": var, "valueFrom": {"secretKeyRef": {"name": ckpt.secret_ref.name, "key": key}}}
                    for var, key in sorted(ckpt.secret_ref.keys.items())
                ]
        else:
            env.append(env_var(contract.CHECKPOINT_DIR, ckpt.path))
    if spec.preflight is not None:
        env += [
            env_var(contract.PREFLIGHT_PEERS, ",".join(gang.hosts())),
            env_var(contract.PREFLIGHT_ALLREDUCE_BYTES, spec.preflight.all_reduce_bytes),
            env_var(contract.PREFLIGHT_TIMEOUT_SECONDS, spec.preflight.timeout_seconds),
        ]
    return env


def _merge_env(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user's own env entries win over ours of the same name (documented escape hatch)."""
    taken = {e["name"] for e in theirs}
    return [e for e in ours if e["name"] not in taken] + theirs


def _restricted_defaults(pod_spec: dict[str, Any]) -> None:
    """Pod Security `restricted` by default for every container, sidecars and init containers too (one
    without them makes the whole pod fail admission); anything the template sets explicitly is kept."""
    psc = pod_spec.setdefault("securityContext", {})
    psc.setdefault("runAsNonRoot", True)
    psc.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        csc = container.setdefault("securityContext", {})
        if not csc.get("privileged"):  # the apiserver refuses privileged with allowPrivilegeEscalation=false
            csc.setdefault("allowPrivilegeEscalation", False)
        csc.setdefault("capabilities", {"drop": ["ALL"]})


def _placement(gang: Gang, pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    spec = gang.spec
    resources = container.setdefault("resources", {})
    tolerations = pod_spec.setdefault("tolerations", [])
    selector = pod_spec.setdefault("nodeSelector", {})
    if spec.resources.gpus:
        for part in ("requests", "limits"):
            resources.setdefault(part, {})[GPU_RESOURCE] = str(spec.resources.gpus)
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if spec.resources.gpu_product:
            selector[GPU_PRODUCT_LABEL] = spec.resources.gpu_product
    overrides = adapter_for(spec.effective_strategy()).pod_overrides(gang)
    selector.update(overrides.get("nodeSelector", {}))
    tolerations.extend(overrides.get("tolerations", []))
    for part, values in overrides.get("resources", {}).items():
        resources.setdefault(part, {}).update(values)
    # A strategy may need its pods in one topology domain (a multi-host TPU slice is one node pool).
    for kind, terms in overrides.get("podAffinity", {}).items():
        pod_spec.setdefault("affinity", {}).setdefault("podAffinity", {}).setdefault(kind, []).extend(terms)
    if not selector:
        del pod_spec["nodeSelector"]
    if not tolerations:
        del pod_spec["tolerations"]
    if gang.avoided_nodes:
        _avoid_nodes(pod_spec, gang.avoided_nodes)
    # Pack the gang: prefer nodes, then zones, already holding its pods. A preference never deadlocks.
    term = {"labelSelector": {"matchLabels": {names.LABEL_JOB: gang.job}}}
    pod_spec.setdefault("affinity", {}).setdefault("podAffinity", {}).setdefault(
        "preferredDuringSchedulingIgnoredDuringExecution", []
    ).extend(
        [
            {"weight": 100, "podAffinityTerm": {**term, "topologyKey": "kubernetes.io/hostname"}},
            {"weight": 50, "podAffinityTerm": {**term, "topologyKey": "topology.kubernetes.io/zone"}},
        ]
    )
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    if spec.scheduling.scheduler_name:
        pod_spec["schedulerName"] = spec.scheduling.scheduler_name


def _avoid_nodes(pod_spec: dict[str, Any], nodes: tuple[str, ...]) -> None:
    """A required node affinity keeping the pod off `nodes`. Required, not preferred: the point is never
    to land there again in this job. Node selector terms are ORed, so the exclusion joins every term
    the template has (or makes the only one)."""
    required = (
        pod_spec.setdefault("affinity", {})
        .setdefault("nodeAffinity", {})
        .setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    )
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchFields", []).append({"key": "metadata.name", "operator": "NotIn", "values": list(nodes)})


def _volumes(gang: Gang, pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = pod_spec.setdefault("volumes", [])
    mounts = container.setdefault("volumeMounts", [])
    if not any(m.get("mountPath") == "/dev/shm" for m in mounts):
        volumes.append({"name": names.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": DEFAULT_SHM}})
        mounts.append({"name": names.SHM_VOLUME, "mountPath": "/dev/shm"})
    ckpt = gang.spec.checkpoint
    if ckpt is not None and not ckpt.uri:
        claim = ckpt.claim_name or names.checkpoint_claim_name(gang.job)
        volumes.append({"name": names.CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": names.CHECKPOINT_VOLUME, "mountPath": ckpt.path})


def _in_place(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    """runPolicy.restartMode InPlace. Any failed exit of the trainer restarts every container of the pod
    where it runs (the kubelet's RestartAllContainers), so a failing rank never ends its pod; the operator
    then moves the gang to a new attempt or fails the job. The attempt comes from the pod's label, in the
    env (resolved again at each container start) and in a file, which the trainer watches to leave when
    the gang moves on (contract.ATTEMPT_FILE)."""
    container["restartPolicy"] = "Never"
    container["restartPolicyRules"] = [
        {"action": "RestartAllContainers", "exitCodes": {"operator": "NotIn", "values": [0]}}
    ]
    label = {"fieldRef": {"fieldPath": f"metadata.labels['{names.LABEL_ATTEMPT}']"}}
    container["env"] = [
        {"name": contract.ATTEMPT, "valueFrom": label} if e["name"] == contract.ATTEMPT else e for e in container["env"]
    ]
    container["env"].append(env_var(contract.ATTEMPT_FILE, f"{names.POD_INFO_DIR}/attempt"))
    pod_spec.setdefault("volumes", []).append(
        {"name": names.POD_INFO_VOLUME, "downwardAPI": {"items": [{"path": "attempt", **label}]}}
    )
    mount = {"name": names.POD_INFO_VOLUME, "mountPath": names.POD_INFO_DIR, "readOnly": True}
    container.setdefault("volumeMounts", []).append(mount)


def build_pod(gang: Gang, index: int) -> Manifest:
    spec = gang.spec
    template = spec.template.model_dump(by_alias=True, exclude_none=True)
    meta_in = template.get("metadata", {})
    pod_spec: dict[str, Any] = copy.deepcopy(template["spec"])
    container = next(c for c in pod_spec["containers"] if c["name"] == names.TRAINER_CONTAINER)
    adapter = adapter_for(spec.effective_strategy())

    name = names.pod_name(gang.job, index, gang.attempt)
    labels = {
        **meta_in.get("labels", {}),
        **job_labels(gang),
        names.LABEL_ROLE: names.ROLE_WORKER,
        names.LABEL_INDEX: str(index),
        names.LABEL_ATTEMPT: str(gang.attempt),
    }
    annotations = {
        **meta_in.get("annotations", {}),
        names.ANNOTATION_REPLICAS: str(gang.replicas),
        names.ANNOTATION_WORLD_SIZE: str(gang.world_size),
    }
    container["env"] = _merge_env(adapter.env(gang, index) + phalanx_env(gang, index), container.get("env", []))
    # The trainer runtime's one-line error (a bad contract, a failed preflight) becomes the termination
    # message the job's status quotes.
    container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    ports = container.setdefault("ports", [])
    taken_ports = {p.get("containerPort") for p in ports}
    wanted = [*adapter.ports(), {"name": "metrics", "containerPort": spec.metrics.port, "protocol": "TCP"}]
    ports.extend(p for p in wanted if p["containerPort"] not in taken_ports)

    _restricted_defaults(pod_spec)
    _placement(gang, pod_spec, container)
    _volumes(gang, pod_spec, container)
    if spec.run_policy.restart_mode is RestartMode.IN_PLACE:
        _in_place(pod_spec, container)
    pod_spec["restartPolicy"] = "Never"  # the operator restarts whole gangs, never single ranks
    pod_spec["hostname"] = names.hostname(gang.job, index)
    pod_spec["subdomain"] = names.service_name(gang.job)
    pod_spec.setdefault("enableServiceLinks", False)
    if held(gang):
        pod_spec["schedulingGates"] = [{"name": names.GANG_GATE}]
    elif pod_group_gang(gang):  # no gate of ours: the kube-scheduler places the attempt's PodGroup whole
        pod_spec["schedulingGroup"] = {"podGroupName": names.attempt_name(gang.job, gang.attempt)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": gang.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(gang)],
        },
        "spec": pod_spec,
    }


def build_service(gang: Gang) -> Manifest:
    """Headless, publishing not-ready addresses: ranks must resolve each other before they are ready."""
    adapter = adapter_for(gang.spec.effective_strategy())
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.service_name(gang.job),
            "namespace": gang.namespace,
            "labels": job_labels(gang),
            "ownerReferences": [owner_reference(gang)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_JOB: gang.job},
            "ports": [
                {"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"], "protocol": "TCP"}
                for p in adapter.ports()
            ],
        },
    }
