"""The Helm chart's values as pydantic models: the single source of charts/phalanx/values.schema.json.

Attribute docstrings become the schema's descriptions. Every model forbids unknown keys, so a typo in
a values file fails `helm install` instead of being silently ignored. The defaults here are the
chart's defaults: a test checks that charts/phalanx/values.yaml (hand-written, for its comments)
holds exactly these values.
"""

from __future__ import annotations

import copy
import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema
from pydantic.alias_generators import to_camel

# Kubernetes resource.Quantity, as the apiserver parses it ("500m", "1", "1.5Gi", "2e3").
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PROMETHEUS_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"


def _quantity(value: str | int | None) -> str | int | None:
    if isinstance(value, str) and not re.match(QUANTITY, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 500m, 2 or 1Gi")
    if isinstance(value, int) and value < 0:
        raise ValueError("a quantity must not be negative")
    return value


# One schema node (not anyOf), so Helm reports a bad quantity in one line naming the pattern.
Quantity = Annotated[
    str | int | None,
    AfterValidator(_quantity),
    WithJsonSchema({"type": ["string", "integer", "null"], "pattern": QUANTITY, "minimum": 0}),
]
Port = Annotated[StrictInt, Field(ge=1024, le=65535)]  # unprivileged: the operator never runs as root
LabelMap = dict[str, str]


class Values(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True, extra="forbid"
    )


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class Scope(StrEnum):
    CLUSTER = "cluster"
    NAMESPACE = "namespace"


class LogLevel(StrEnum):
    QUIET = "quiet"
    NORMAL = "normal"
    VERBOSE = "verbose"
    DEBUG = "debug"


class LogFormat(StrEnum):
    PLAIN = "plain"
    FULL = "full"
    JSON = "json"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class Image(Values):
    repository: str = Field(default="ghcr.io/phalanx-dev/phalanx-operator", pattern=r"^[a-z0-9][a-z0-9._/:-]*[a-z0-9]$")
    """Image repository, without tag or digest."""
    tag: str = Field(default="", pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
    """Image tag; empty means the chart's appVersion."""
    digest: str = Field(default="", pattern=r"^(sha256:[a-f0-9]{64})?$")
    """Image digest (sha256:...); when set it pins the image and the tag is ignored."""
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    """Kubernetes imagePullPolicy."""


class LocalObjectReference(Values):
    name: str = Field(min_length=1)


class Rbac(Values):
    create: StrictBool = True
    """Create the operator's (Cluster)Role and binding. Turn off only if you manage RBAC yourself with the
    same rules (see templates/rbac.yaml)."""
    aggregate_to_default_roles: StrictBool = True
    """Add TrainingJob permissions to the built-in admin, edit and view ClusterRoles, so namespace users
    can work with jobs without extra RBAC."""


class ServiceAccount(Values):
    create: StrictBool = True
    """Create the operator's ServiceAccount."""
    name: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253)
    """ServiceAccount name; empty means the release's full name."""
    annotations: LabelMap = {}
    """Annotations on the ServiceAccount (e.g. a cloud IAM role binding)."""


class Operator(Values):
    workers: StrictInt = Field(default=8, ge=1, le=64)
    """Concurrent reconcile workers (PHALANX_WORKERS)."""
    log_level: LogLevel = LogLevel.NORMAL
    """kopf log verbosity."""
    log_format: LogFormat = LogFormat.PLAIN
    """kopf log format; json suits log collectors."""
    scrape_interval_seconds: StrictInt = Field(default=15, ge=1, le=3600)
    """How often each running job's trainer pods are scraped for throughput (PHALANX_SCRAPE_INTERVAL_SECONDS)."""
    scrape_timeout_seconds: Annotated[float, Field(ge=0.1, le=60)] = 3
    """How long one trainer pod's /metrics may take before that scrape counts as failed; a rank that stops
    answering (hung, SIGSTOPped) is seen as not advancing after this (PHALANX_SCRAPE_TIMEOUT_SECONDS)."""


class LeaderElection(Values):
    """The Lease the replicas elect a leader on (coordination.k8s.io, in the release namespace). Only the
    leader acts; the others keep warm caches and take over when it stops renewing, or at once when it
    releases the lease on shutdown. The operator refuses to start unless duration > renew deadline >
    retry period."""

    lease_duration_seconds: StrictInt = Field(default=15, ge=2, le=3600)
    """How long a standby waits, after the leader's last renew it saw, before it takes over a leader that
    died without releasing the lease (SIGKILL, node loss) (PHALANX_LEASE_DURATION_SECONDS)."""
    renew_deadline_seconds: StrictInt = Field(default=10, ge=1, le=3600)
    """A leader that could not renew for this long stops acting, before any standby may take over
    (PHALANX_LEASE_RENEW_DEADLINE_SECONDS)."""
    retry_period_seconds: Annotated[float, Field(gt=0, le=600)] = 1
    """How often the leader renews and a standby looks at the lease; a released lease is taken within one
    period (PHALANX_LEASE_RETRY_PERIOD_SECONDS)."""


class PodDisruptionBudget(Values):
    enabled: StrictBool = True
    """A PodDisruptionBudget for the operator pods (rendered only with more than one replica: with one, a
    minAvailable of 1 would block every node drain)."""
    min_available: StrictInt = Field(default=1, ge=0)
    """Operator pods a voluntary disruption (a drain) must leave running."""


class Resources(Values):
    cpu: Quantity = None
    memory: Quantity = None


class ResourceRequirements(Values):
    requests: Resources = Resources(cpu="100m", memory="256Mi")
    limits: Resources = Resources(memory="512Mi")
    """No CPU limit by default: throttling a controller slows every reconcile; memory is capped."""


class MetricsService(Values):
    enabled: StrictBool = True
    """Create a Service for the metrics port."""
    type: ServiceType = ServiceType.CLUSTER_IP
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = 8080
    """Service port (the container always listens on metrics.port)."""
    annotations: LabelMap = {}


class Monitor(Values):
    enabled: StrictBool = False
    """Create the prometheus-operator object. Skipped, with a warning in the install notes, when the
    cluster does not serve monitoring.coreos.com/v1."""
    interval: str = Field(default="30s", pattern=PROMETHEUS_DURATION)
    """Scrape interval, a Prometheus duration."""
    labels: LabelMap = {}
    """Extra labels, e.g. the `release` label your Prometheus selects monitors by."""


class Metrics(Values):
    enabled: StrictBool = True
    """Serve Prometheus metrics (PHALANX_OPERATOR_METRICS_PORT); off sets the port to 0."""
    port: Port = 8080
    """Container port of the metrics endpoint."""
    service: MetricsService = MetricsService()
    service_monitor: Monitor = Monitor()
    """A ServiceMonitor selecting the metrics Service (needs metrics.service.enabled)."""
    pod_monitor: Monitor = Monitor()
    """A PodMonitor selecting the operator pod directly (no Service needed)."""


class Probes(Values):
    port: Port = 8081
    """Port of kopf's liveness endpoint (/healthz), used by the livenessProbe."""


class Dashboards(Values):
    enabled: StrictBool = False
    """Ship the Grafana dashboards (dashboards/*.json) as a ConfigMap labelled grafana_dashboard: "1", which
    the kube-prometheus-stack Grafana sidecar loads."""
    namespace: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63)
    """Namespace of the ConfigMap; empty means the release namespace. Set it to Grafana's when its sidecar
    watches one namespace only."""
    labels: LabelMap = {}
    """Extra labels on the ConfigMap."""
    annotations: LabelMap = {}
    """Extra annotations, e.g. grafana_folder: Training."""


class ChartValues(Values):
    """Values of the phalanx Helm chart."""

    image: Image = Image()
    image_pull_secrets: list[LocalObjectReference] = []
    """Secrets for pulling the operator image (the kubelet reads them; the operator never does)."""
    scope: Scope = Scope.CLUSTER
    """cluster: watch TrainingJobs in all namespaces (ClusterRole). namespace: watch only watchNamespace
    (namespaced Role; a small ClusterRole still reads nodes, PriorityClasses and CRDs, which are cluster-scoped)."""
    watch_namespace: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63)
    """With scope=namespace: the namespace to watch; empty means the release namespace."""
    rbac: Rbac = Rbac()
    service_account: ServiceAccount = ServiceAccount()
    replicas: StrictInt = Field(default=2, ge=1, le=10)
    """Operator pods: one leads and acts, the others stand by with warm caches (leaderElection)."""
    leader_election: LeaderElection = LeaderElection()
    pod_disruption_budget: PodDisruptionBudget = PodDisruptionBudget()
    operator: Operator = Operator()
    resources: ResourceRequirements = ResourceRequirements()
    """The operator container's requests and limits."""
    metrics: Metrics = Metrics()
    probes: Probes = Probes()
    priority_class_name: str = ""
    """PriorityClass of the operator pod."""
    pod_annotations: LabelMap = {}
    pod_labels: LabelMap = {}
    node_selector: LabelMap = {}
    tolerations: list[dict[str, Any]] = []
    affinity: dict[str, Any] = {}
    dashboards: Dashboards = Dashboards()


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace $refs by their definitions: Helm's validators differ in $defs support; inlined works in all."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in ("$defs", "title")}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def values_schema() -> dict[str, Any]:
    raw = ChartValues.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": "phalanx chart values", **schema}


def values_schema_json() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"
