"""TrainingJob v1alpha1 as pydantic models.

Attribute docstrings become the CRD's field descriptions (`kubectl explain`); CEL rules sit next to
the model they guard. The CRD generator (phalanx.api.crd) turns these models into OpenAPI v3.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from phalanx.api import frameworks
from phalanx.api.frameworks import Framework, Strategy

GROUP = "phalanx.dev"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAME = "tj"
CATEGORY = "phalanx"
API_VERSION = f"{GROUP}/{VERSION}"

# CEL rules, keyed by the model they are attached to.
Rule = dict[str, Any]


def rule(expr: str, message: str, field_path: str | None = None, reason: str | None = None) -> Rule:
    r: Rule = {"rule": expr, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    if reason:
        r["reason"] = reason
    return r


def cel(*rules: Rule) -> ConfigDict:
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": cast(Any, list(rules))},
    )


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True, extra="forbid"
    )


class RestartOn(StrEnum):
    RETRYABLE = "retryable"
    ALWAYS = "always"
    NEVER = "never"


class CleanPodPolicy(StrEnum):
    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class RestartMode(StrEnum):
    RECREATE = "Recreate"
    IN_PLACE = "InPlace"


class GangBackend(StrEnum):
    GATES = "Gates"
    POD_GROUP = "PodGroup"


class RetainPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class AccessMode(StrEnum):
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


# Largest value of a seconds field: Kubernetes' int32, ~68 years. Deadline arithmetic never adds such a
# span to a date (reconcile compares elapsed seconds), so no accepted value can overflow a datetime.
MAX_SECONDS = 2**31 - 1
# Counters in status: int32 as well, so one that someone else writes near the limit can still be counted up.
MAX_COUNT = 2**31 - 1

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Times in status: the apiserver refuses a status whose times are not RFC 3339, whoever writes it.
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]

# A domain-prefixed path (acme.io/foo), as Kubernetes validates a Job's spec.managedBy.
MANAGED_BY = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[-A-Za-z0-9_.~!$&'()*+,;=:@%/]+$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


class ElasticPolicy(Model):
    """Bounds for `kubectl scale` and autoscalers: spec.replicas must stay inside them."""

    model_config = cel(
        rule("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas", ".minReplicas")
    )

    min_replicas: Annotated[int, Field(ge=1, le=10000)] = 1
    """Fewest worker pods the job may be scaled down to."""
    max_replicas: Annotated[int, Field(ge=1, le=10000)]
    """Most worker pods the job may be scaled up to."""


class TPUResources(Model):
    """A GKE TPU slice: the pods run on the TPU VM hosts of one slice, one pod per host."""

    accelerator: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    """GKE TPU accelerator (node label cloud.google.com/gke-tpu-accelerator), e.g. tpu-v5-lite-podslice."""
    topology: Annotated[str, Field(pattern=r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$", max_length=32)]
    """Slice topology (node label cloud.google.com/gke-tpu-topology), e.g. 2x4; fixes the host count."""
    chips_per_host: Annotated[int | None, Field(ge=1, le=8)] = None
    """google.com/tpu chips requested per pod; defaults to 4 (8 for single-host v5e/v6e 2x4)."""


class Resources(Model):
    """Accelerators per pod. CPU and memory come from the trainer container in the template."""

    model_config = cel(
        rule("!(has(self.tpu) && self.gpus > 0)", "a pod uses either GPUs or a TPU, not both", ".gpus"),
        rule("!has(self.gpuProduct) || self.gpus > 0", "gpuProduct needs gpus > 0", ".gpuProduct"),
    )

    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    """nvidia.com/gpu requested (and limited) per pod."""
    gpu_product: Annotated[str | None, Field(min_length=1, max_length=63)] = None
    """Required GPU model: the node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3."""
    tpu: TPUResources | None = None
    """TPU slice for strategy tpu (TensorFlow only)."""


class StorageRequest(Model):
    """A PersistentVolumeClaim the operator creates for the job's checkpoints."""

    size: Annotated[str, Field(pattern=QUANTITY, max_length=32)]
    """Requested capacity, a Kubernetes quantity such as 100Gi."""
    storage_class_name: Annotated[str | None, Field(max_length=253)] = None
    """StorageClass of the claim; the cluster default when omitted."""
    access_mode: AccessMode = AccessMode.READ_WRITE_MANY
    """ReadWriteMany by default: pods on several nodes read the checkpoint on resume."""


class SecretKeyRef(Model):
    """Credentials for an object store, passed to the pods as env from a Secret the operator never reads."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the Secret in the job's namespace."""
    keys: Annotated[dict[str, str], Field(max_length=16)] = {}
    """Env variable name -> key in the Secret, e.g. AWS_ACCESS_KEY_ID: access-key."""


class CheckpointSpec(Model):
    """Where checkpoints live: one source, the same for every pod of every attempt."""

    model_config = cel(
        rule(
            "[has(self.claimName), has(self.storage), has(self.uri)].filter(x, x).size() == 1",
            "set exactly one of claimName, storage or uri",
        ),
        rule("!has(self.secretRef) || has(self.uri)", "secretRef only goes with uri", ".secretRef"),
    )

    claim_name: Annotated[str | None, Field(min_length=1, max_length=253)] = None
    """An existing PersistentVolumeClaim in the job's namespace."""
    storage: StorageRequest | None = None
    """A claim the operator provisions for this job (named <job>-checkpoints)."""
    uri: Annotated[str | None, Field(pattern=r"^[a-z][a-z0-9+.-]*://.+", max_length=2048)] = None
    """An fsspec URL (s3://bucket/prefix, gs://..., file://...) for object-store checkpoints."""
    secret_ref: SecretKeyRef | None = None
    """Credentials for uri, exposed to the trainer as env from secretKeyRef."""
    path: Annotated[str, Field(pattern=r"^/[^:]*$", max_length=1024)] = "/checkpoints"
    """Mount path of the checkpoint volume in the trainer container."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 3
    """Committed checkpoints to keep; older ones are removed by the trainer runtime."""
    interval_seconds: Annotated[int, Field(ge=1, le=86400)] = 600
    """Seconds between periodic saves by the trainer runtime."""
    retain_policy: RetainPolicy = RetainPolicy.RETAIN
    """Retain keeps an operator-provisioned claim after the job is deleted; Delete removes it."""


class RunPolicy(Model):
    """How the job restarts, ends and cleans up."""

    backoff_limit: Annotated[int, Field(ge=0, le=1000)] = 3
    """Whole-gang restarts allowed after failures before the job is Failed."""
    restart_on: RestartOn = RestartOn.RETRYABLE
    """retryable: exit codes 128-255, eviction, node loss; always: any failure; never: no restarts."""
    active_deadline_seconds: Annotated[int | None, Field(ge=1, le=MAX_SECONDS)] = None
    """Wall-clock limit for the whole job from its start; Failed with DeadlineExceeded after it."""
    startup_deadline_seconds: Annotated[int | None, Field(ge=1, le=MAX_SECONDS)] = 900
    """Limit for pods to get running (unschedulable, image pull errors); Failed with the cause after it."""
    progress_deadline_seconds: Annotated[int | None, Field(ge=10, le=MAX_SECONDS)] = None
    """Hang detection (off when unset): a Running gang in which no rank advanced a training step for this
    long is restarted from its last checkpoint with reason Hung; counts toward backoffLimit. The clock
    starts at an attempt's first step, so image pulls and data loading are not counted (docs/health.md)."""
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0, le=MAX_SECONDS)] = None
    """Delete the finished job (and its pods) this many seconds after it ends."""
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    """Which pods to delete when the job ends: All, only the Running ones, or None."""
    suspend: bool = False
    """Suspended jobs have no pods; resuming starts a new attempt (Kueue relies on this)."""
    node_lost_grace_seconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 40
    """How long a node under a running pod may be NotReady (Ready False or Unknown, counted from the
    condition's lastTransitionTime) before its pods count as lost: they are force-deleted and the gang
    restarts as NodeLost. A deleted node is lost at once."""
    restart_mode: RestartMode = RestartMode.RECREATE
    """How a failure restart (GangRestart) restarts the gang. Recreate: every pod is deleted and created
    anew. InPlace: every container of every pod restarts where it runs, keeping the pods, their names,
    nodes and addresses (Kubernetes 1.36 RestartAllContainers; nodes must declare the feature
    RestartAllContainersOnContainerExits). The trainers see the new attempt; a pod that cannot restart in
    place (ended, on a lost node, or not restarted within 30 s) is recreated. Other restarts (rescale,
    Hung, node loss, preemption) and the restarts of a job Kueue queues or of one on gangBackend PodGroup (each
    attempt there is a PodGroup of its own) always recreate (docs/design.md, In-place gang restart)."""


class StragglerPolicy(Model):
    """When a rank counts as a straggler, and what is done about it."""

    # The schema's fractional minimum alone lets an integer 1 through (the apiserver compares integers with
    # the minimum truncated to an integer): the rule holds the bound for both.
    model_config = cel(
        rule("!has(self.threshold) || self.threshold >= 1.1", "threshold must be at least 1.1", ".threshold")
    )

    threshold: Annotated[float, Field(ge=1.1, le=100)] = 1.5
    """A rank whose step time, less its wait for peers in collectives, is at least this many times the median
    of the other ranks' (median over the scrape window) is a straggler: condition Straggler and an Event."""
    restart: bool = False
    """Also restart the gang from its last checkpoint, keeping the straggler's node out of the next attempt
    (status.avoidedNodes); reason Straggler, counts toward backoffLimit."""


class PreflightSpec(Model):
    """A short gang-wide check every pod runs with the trainer runtime before training (PyTorch)."""

    all_reduce_bytes: Annotated[int, Field(ge=4, le=2**34)] = 2**26
    """Size of the timed all-reduce, in bytes (64 MiB by default); its bus bandwidth goes to status.preflight."""
    timeout_seconds: Annotated[int, Field(ge=5, le=3600)] = 120
    """Time for every peer to resolve, the rendezvous to complete and the all-reduce to run; a pod past it fails."""


class HealthPolicy(Model):
    """What the operator does about slow ranks and unhealthy accelerators (docs/health.md)."""

    straggler: StragglerPolicy = StragglerPolicy()
    """Straggler detection from the trainers' per-rank step times; reported always, restarts only if asked."""
    restart_on_unhealthy_gpu: bool = True
    """Restart the gang off the node when the kubelet reports a device allocated to one of its pods
    Unhealthy (status.containerStatuses[].allocatedResourcesStatus); reason GPUUnhealthy, counts toward
    backoffLimit."""


class Scheduling(Model):
    """Gang admission and placement."""

    # One admission system per job: Kueue admits a queued job, a custom scheduler places its own pods, so
    # the kube-scheduler's PodGroup gang would be a second, conflicting one.
    model_config = cel(
        rule(
            "!has(self.gangBackend) || self.gangBackend != 'PodGroup' || !has(self.queueName)",
            "gangBackend PodGroup cannot be combined with queueName: Kueue admits a queued job's gang; "
            "drop one of them",
            ".gangBackend",
        ),
        rule(
            "!has(self.gangBackend) || self.gangBackend != 'PodGroup' || !has(self.schedulerName)",
            "gangBackend PodGroup needs the kube-scheduler (its GangScheduling plugin places the PodGroup); "
            "drop schedulerName",
            ".gangBackend",
        ),
        rule(
            "!has(self.gangBackend) || self.gangBackend != 'PodGroup' || !has(self.gang) || self.gang",
            "gangBackend PodGroup is gang admission: it cannot go with gang: false",
            ".gangBackend",
        ),
    )

    gang: bool = True
    """No pod schedules until the whole gang fits: a gang that fits when its pods are created gets them
    ungated with their placement, otherwise they are created with a scheduling gate lifted for all at once."""
    priority_class_name: Annotated[str | None, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] = (
        None
    )
    """PriorityClass of the pods; also orders gang admission."""
    # A LocalQueue's name (a DNS subdomain) that also fits the Workload's queue-name label (63 characters).
    queue_name: Annotated[str | None, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] = None
    """A Kueue LocalQueue: phalanx makes a Kueue Workload of the whole gang per attempt and starts the gang
    (with the assigned flavor's node labels and tolerations) once Kueue admits it (docs/scheduling.md)."""
    scheduler_name: Annotated[str | None, Field(max_length=253)] = None
    """A custom scheduler for the pods (e.g. a PodGroup-based gang scheduler); phalanx then defers gating."""
    gang_backend: GangBackend = GangBackend.GATES
    """Who does gang admission. Gates (default): phalanx creates the pods behind its scheduling gate and lifts
    it for the whole gang once it fits. PodGroup: Kubernetes 1.36's native gang scheduling (alpha; the
    GenericWorkload and GangScheduling feature gates and the scheduling.k8s.io/v1alpha2 API must be on):
    phalanx makes a Workload and a PodGroup (minCount = replicas) per attempt, and the kube-scheduler binds
    all the attempt's pods or none (docs/scheduling.md). Not with queueName, schedulerName or gang: false."""


class MetricsSpec(Model):
    """Trainer metrics the operator reads to compute throughput and scaling efficiency."""

    port: Annotated[int, Field(ge=1024, le=65535)] = 9400
    """Port the trainer runtime serves Prometheus metrics on (PHALANX_METRICS_PORT)."""
    baseline_samples_per_second: Annotated[float | None, Field(ge=1e-6, le=1e15)] = None
    """Declared single-replica throughput X(1); else taken from the job's smallest world size."""


class Template(Model):
    """A PodTemplateSpec. The container named "trainer" runs the training process.

    In the CRD this node is Kubernetes' own PodTemplateSpec schema (phalanx.api.podtemplate, generated
    from the Kubernetes release in dev/versions.env), so the apiserver refuses a bad template at apply
    time naming its field; the rule and bounds below are laid over it (phalanx.api.crd)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": cast(
                Any,
                [
                    rule(
                        "self.spec.containers.exists(c, c.name == 'trainer')",
                        "template.spec.containers needs a container named 'trainer'",
                        ".spec.containers",
                    )
                ],
            ),
        },
        extra="allow",
    )

    metadata: dict[str, Any] = {}
    """Labels and annotations copied to every pod (other metadata is refused: the pods are named by phalanx)."""
    spec: PodSpecShape
    """A Kubernetes PodSpec (ephemeralContainers aside: pods cannot be created with them)."""


class ContainerShape(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1, max_length=63)]


class PodSpecShape(BaseModel):
    """The parts of a PodSpec the operator reads; the rest is passed through to the pods as it is."""

    model_config = ConfigDict(extra="allow")
    # Bounded so the CEL rule's cost is too (an unbounded list of unbounded names exceeds the budget).
    containers: Annotated[list[ContainerShape], Field(min_length=1, max_length=32)]


Template.model_rebuild()

STRATEGY_FITS_FRAMEWORK = frameworks.strategy_rule()


class TrainingJobSpec(Model):
    """The desired training job."""

    model_config = cel(
        rule(STRATEGY_FITS_FRAMEWORK, frameworks.strategy_message(), ".strategy"),
        rule(
            "!has(self.elastic) || (self.replicas >= self.elastic.minReplicas && "
            "self.replicas <= self.elastic.maxReplicas)",
            "replicas must lie within elastic.minReplicas..elastic.maxReplicas",
            ".replicas",
        ),
        rule(
            "(has(self.strategy) && self.strategy == 'tpu') == has(self.resources.tpu)",
            "resources.tpu is required by strategy tpu and allowed only with it",
            ".resources.tpu",
        ),
        rule(
            frameworks.preflight_rule(),
            f"preflight runs with the {' or '.join(frameworks.preflight_frameworks())} trainer runtime only",
            ".preflight",
        ),
        rule(
            "type(self.procsPerPod) == int ? self.procsPerPod >= 1 && self.procsPerPod <= 64 "
            ": self.procsPerPod == 'auto'",
            "procsPerPod must be 'auto' or an integer 1..64",
            ".procsPerPod",
        ),
        # As for a Kubernetes Job: who reconciles a job is fixed at its creation.
        rule(
            "has(self.managedBy) == has(oldSelf.managedBy)",
            "managedBy cannot be added or removed after creation",
            ".managedBy",
        ),
    )

    framework: Framework
    """pytorch or tensorflow."""
    strategy: Strategy | None = None
    """pytorch: ddp; tensorflow: multiWorkerMirrored (default) or tpu. Defaulted from framework."""
    replicas: Annotated[int, Field(ge=1, le=10000)] = 1
    """Worker pods. The scale subresource points here (kubectl scale tj/NAME --replicas=N)."""
    elastic: ElasticPolicy | None = None
    """Optional bounds for replicas under kubectl scale or an autoscaler."""
    procs_per_pod: Annotated[int | Literal["auto"], Field(json_schema_extra={"x-kubernetes-int-or-string": True})] = (
        "auto"
    )
    """Training processes per pod: auto = GPUs per pod (1 without GPUs). World size = replicas x procsPerPod."""
    resources: Resources = Resources()
    """Accelerators per pod."""
    template: Template
    """Pod template, validated against Kubernetes' PodTemplateSpec schema; the container named trainer trains."""
    checkpoint: CheckpointSpec | None = None
    """Checkpoint storage the operator mounts and names in PHALANX_CHECKPOINT_DIR."""
    run_policy: RunPolicy = RunPolicy()
    """Restarts, deadlines, cleanup and suspension."""
    scheduling: Scheduling = Scheduling()
    """Gang admission and placement."""
    health: HealthPolicy = HealthPolicy()
    """Straggler detection and unhealthy-GPU restarts (hang detection: runPolicy.progressDeadlineSeconds)."""
    preflight: PreflightSpec | None = None
    """Optional check before training: peers resolve, rendezvous, a timed all-reduce. A pod that fails it
    restarts the gang off its node (reason PreflightFailed, counts toward backoffLimit). PyTorch only."""
    metrics: MetricsSpec = MetricsSpec()
    """Trainer metrics and the scaling baseline."""
    managed_by: Annotated[
        str | None,
        Field(
            max_length=63,
            pattern=MANAGED_BY,
            json_schema_extra={"x-kubernetes-validations": [rule("self == oldSelf", "managedBy is immutable")]},
        ),
    ] = None
    """The controller that reconciles this job, as for a Kubernetes Job: unset or
    phalanx.dev/trainingjob-controller is phalanx; kueue.x-k8s.io/multikueue hands the job to Kueue's
    MultiKueue, which runs it on a worker cluster (phalanx here makes only its Kueue Workload); any other
    value, another controller: phalanx neither creates pods nor writes status. Immutable."""

    def effective_strategy(self) -> Strategy:
        if self.strategy is not None:
            return self.strategy
        return frameworks.default_strategy(self.framework)

    def effective_procs_per_pod(self) -> int:
        if self.procs_per_pod == "auto":
            return max(1, self.resources.gpus) if frameworks.TABLE[self.framework].procs_per_gpu else 1
        return self.procs_per_pod

    def world_size(self) -> int:
        return self.replicas * self.effective_procs_per_pod()


class Condition(Model):
    """A Kubernetes-style condition."""

    type: str
    """Admitted, Running, Restarting, Succeeded, Failed, Suspended, ReplicaFailure, ReconcileError or Straggler."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """CamelCase reason."""
    message: str = ""
    """Human-readable detail."""
    observed_generation: int | None = None
    """The spec generation this condition was computed from."""
    last_transition_time: Time
    """When status last changed (RFC 3339)."""


class ReplicaCounts(Model):
    """Pods of the current attempt by state."""

    desired: int = 0
    """Pods the current spec asks for."""
    active: int = 0
    """Pods of the current attempt that exist and are not finished (the scale subresource reads this)."""
    ready: int = 0
    """Pods running and ready."""
    succeeded: int = 0
    """Pods that exited 0."""
    failed: int = 0
    """Pods that failed."""


class CheckpointStatus(Model):
    """The newest checkpoint the trainers reported."""

    step: int
    """Training step of the checkpoint."""
    time: Time
    """When it was committed (RFC 3339)."""


SIZES_KEPT = 16


class SizeThroughput(Model):
    """The throughput measured at one job size: one entry per size, the latest reading."""

    replicas: int
    """Pods (N in the efficiency)."""
    world_size: int
    """Training processes at that size: replicas x procsPerPod."""
    samples_per_second: float
    """Samples/s of the whole job at that size, as last measured."""


class ThroughputStatus(Model):
    """A small summary of training speed; nothing per step is kept in status."""

    samples_per_second: float | None = None
    """Samples/s of the whole job over the last scrape window."""
    scaling_efficiency: float | None = None
    """Weak-scaling efficiency X(N) / (N * X(1)), 0..1+."""
    baseline_samples_per_second: float | None = None
    """X(1) used for the efficiency: declared, or measured at the smallest world size seen."""
    baseline_replicas: int | None = None
    """World size (pods) the baseline was measured at."""
    goodput: float | None = None
    """Share of wall time spent training rather than pending, restarting or redoing lost work."""
    sizes: Annotated[list[SizeThroughput], Field(max_length=SIZES_KEPT)] = []
    """Samples/s at each size the job ran at, smallest first (kubectl phalanx plot draws them); at most 16."""


AVOIDED_NODES_KEPT = 16


class LostTime(Model):
    """Known losses of wall time, summed over the job's attempts."""

    hung_seconds: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    """From the last step any rank made to the Hung restart, for every hang detected."""
    restart_seconds: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    """From each gang restart (any reason) to all pods of the new attempt running."""
    preflight_seconds: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    """Time the attempts' preflight checks took (spec.preflight)."""


class PreflightStatus(Model):
    """The current attempt's preflight check, as its slowest pod reported it."""

    attempt: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    """The attempt that ran it."""
    seconds: Annotated[float, Field(ge=0, le=1e9)]
    """How long the check took (the slowest pod's)."""
    bus_bandwidth_bytes_per_second: Annotated[float, Field(ge=0, le=1e15)]
    """Bus bandwidth of the all-reduce, 2 (n-1)/n x bytes / seconds (the lowest pod's)."""


class TrainingJobStatus(Model):
    """Observed state, written by the operator only."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True, extra="ignore"
    )

    observed_generation: int | None = None
    """The spec generation last acted on."""
    state: str | None = None
    """Pending, Queued, Starting, Running, Restarting, Suspended, Succeeded or Failed (the State column)."""
    conditions: list[Condition] = []
    """Admitted, Running, Restarting, Succeeded, Failed, Suspended, ReplicaFailure, ReconcileError, Straggler."""
    attempt: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    """Current gang attempt, 1-based; every gang restart or rescale starts a new one (PHALANX_ATTEMPT)."""
    restarts: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    """Gang restarts caused by failures (counted against backoffLimit)."""
    world_size: int | None = None
    """Training processes of the current attempt: replicas x procsPerPod."""
    replicas: ReplicaCounts = ReplicaCounts()
    """Pods of the current attempt by state."""
    ready_summary: str | None = None
    """ready/desired, for the Replicas column."""
    gpus: int | None = None
    """GPUs the job uses in total (replicas x gpus per pod)."""
    selector: str | None = None
    """Label selector of the job's pods (for the scale subresource and autoscalers)."""
    start_time: Time | None = None
    """When the first attempt started running."""
    completion_time: Time | None = None
    """When the job succeeded or failed."""
    attempt_start_time: Time | None = None
    """When the current attempt's pods were created."""
    last_checkpoint: CheckpointStatus | None = None
    """The newest checkpoint the trainers reported."""
    resumed_from_step: int | None = None
    """The checkpoint step the current attempt resumed from, once its trainers report it."""
    throughput: ThroughputStatus | None = None
    """Throughput and scaling efficiency."""
    avoided_nodes: Annotated[list[str], Field(max_length=AVOIDED_NODES_KEPT)] = []
    """Nodes later attempts are kept off (required node affinity), oldest first: where a rank had an unhealthy
    GPU, failed the preflight or straggled (with health.straggler.restart); at most 16, the oldest dropped first."""
    lost_time: LostTime | None = None
    """Wall time lost to hangs, between attempts and in preflight checks (goodput's known losses; docs/metrics.md)."""
    preflight: PreflightStatus | None = None
    """The preflight check of the current attempt, once its pods passed it (spec.preflight)."""
