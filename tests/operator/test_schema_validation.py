"""Bad specs are refused by the real apiserver at `kubectl apply`, with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.plugins.operator import job_manifest

TEMPLATE = job_manifest("bad", replicas=2)["spec"]["template"]
TRAINER = "spec.template.spec.containers[0]"


def with_spec(**spec: Any) -> dict[str, Any]:
    body = job_manifest("bad", replicas=2)
    body["spec"].update(spec)
    return body


def without(field: str) -> dict[str, Any]:
    body = job_manifest("bad", replicas=2)
    del body["spec"][field]
    return body


def tpu(topology: str = "2x4", **extra: Any) -> dict[str, Any]:
    return {"tpu": {"accelerator": "tpu-v5-lite-podslice", "topology": topology, **extra}}


def with_template(metadata: dict[str, Any] | None = None, **pod_spec: Any) -> dict[str, Any]:
    """A job whose pod template carries the given metadata and PodSpec fields (containers merged into the trainer's)."""
    body = job_manifest("bad", replicas=2)
    template = body["spec"]["template"]
    template["metadata"].update(metadata or {})
    trainer = pod_spec.pop("trainer", {})
    template["spec"]["containers"][0].update(trainer)
    template["spec"].update(pod_spec)
    return body


def no_trainer() -> dict[str, Any]:
    body = job_manifest("bad")
    body["spec"]["template"] = copy.deepcopy(TEMPLATE)
    body["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    return body


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown framework", with_spec(framework="jax"), "spec.framework"),
    ("framework missing", without("framework"), "spec.framework"),
    ("template missing", without("template"), "spec.template"),
    ("unknown strategy", with_spec(strategy="horovod"), "spec.strategy"),
    ("tf strategy on pytorch", with_spec(strategy="multiWorkerMirrored"), "spec.strategy"),
    ("ddp on tensorflow", with_spec(framework="tensorflow", strategy="ddp"), "spec.strategy"),
    ("zero replicas", with_spec(replicas=0), "spec.replicas"),
    ("too many replicas", with_spec(replicas=20000), "spec.replicas"),
    ("replicas as text", with_spec(replicas="four"), "spec.replicas"),
    ("replicas outside elastic", with_spec(replicas=9, elastic={"minReplicas": 1, "maxReplicas": 8}), "spec.replicas"),
    ("elastic min above max", with_spec(elastic={"minReplicas": 4, "maxReplicas": 2}), "spec.elastic.minReplicas"),
    ("procsPerPod zero", with_spec(procsPerPod=0), "spec.procsPerPod"),
    ("procsPerPod word", with_spec(procsPerPod="many"), "spec.procsPerPod"),
    ("negative gpus", with_spec(resources={"gpus": -1}), "spec.resources.gpus"),
    (
        "gpuProduct without gpus",
        with_spec(resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3"}),
        "spec.resources.gpuProduct",
    ),
    ("tpu without strategy tpu", with_spec(framework="tensorflow", resources=tpu()), "spec.resources.tpu"),
    ("strategy tpu without tpu", with_spec(framework="tensorflow", strategy="tpu"), "spec.resources.tpu"),
    (
        "bad tpu topology",
        with_spec(framework="tensorflow", strategy="tpu", resources=tpu("2by4")),
        "spec.resources.tpu.topology",
    ),
    ("no trainer container", no_trainer(), "spec.template.spec.containers"),
    ("two checkpoint sources", with_spec(checkpoint={"claimName": "c", "uri": "s3://b/p"}), "spec.checkpoint"),
    ("relative checkpoint path", with_spec(checkpoint={"claimName": "c", "path": "ckpt"}), "spec.checkpoint.path"),
    ("keep zero", with_spec(checkpoint={"claimName": "c", "keep": 0}), "spec.checkpoint.keep"),
    ("bad storage size", with_spec(checkpoint={"storage": {"size": "lots"}}), "spec.checkpoint.storage.size"),
    ("bad restartOn", with_spec(runPolicy={"restartOn": "sometimes"}), "spec.runPolicy.restartOn"),
    ("bad cleanPodPolicy", with_spec(runPolicy={"cleanPodPolicy": "Some"}), "spec.runPolicy.cleanPodPolicy"),
    ("negative backoffLimit", with_spec(runPolicy={"backoffLimit": -1}), "spec.runPolicy.backoffLimit"),
    # Numbers beyond what a deadline can mean (int32 seconds, ~68 years) are refused, not reconciled.
    (
        "huge activeDeadlineSeconds",
        with_spec(runPolicy={"activeDeadlineSeconds": 2**31}),
        "spec.runPolicy.activeDeadlineSeconds",
    ),
    (
        "int64-max startupDeadlineSeconds",
        with_spec(runPolicy={"startupDeadlineSeconds": 2**63 - 1}),
        "spec.runPolicy.startupDeadlineSeconds",
    ),
    (
        "huge ttlSecondsAfterFinished",
        with_spec(runPolicy={"ttlSecondsAfterFinished": 10**15}),
        "spec.runPolicy.ttlSecondsAfterFinished",
    ),
    (
        "tiny baselineSamplesPerSecond",
        with_spec(metrics={"baselineSamplesPerSecond": 1e-300}),
        "spec.metrics.baselineSamplesPerSecond",
    ),
    (
        "progressDeadlineSeconds below 10",
        with_spec(runPolicy={"progressDeadlineSeconds": 5}),
        "spec.runPolicy.progressDeadlineSeconds",
    ),
    ("unknown gangBackend", with_spec(scheduling={"gangBackend": "Volcano"}), "spec.scheduling.gangBackend"),
    ("straggler threshold 1", with_spec(health={"straggler": {"threshold": 1.0}}), "spec.health.straggler.threshold"),
    ("preflight with tensorflow", with_spec(framework="tensorflow", preflight={}), "spec.preflight"),
    ("preflight all-reduce of 0 bytes", with_spec(preflight={"allReduceBytes": 0}), "spec.preflight.allReduceBytes"),
    # The pod template is checked against Kubernetes' own PodTemplateSpec schema.
    ("integer label value", with_template({"labels": {"team": 5}}), "spec.template.metadata.labels.team"),
    ("annotations not a map", with_template({"annotations": 5}), "spec.template.metadata.annotations"),
    ("metadata the pods cannot take", with_template({"name": "mine"}), "spec.template.metadata.name"),
    ("unknown PodSpec field", with_template(replicaz=3), "spec.template.spec.replicaz"),
    ("unknown container field", with_template(trainer={"imagePolicy": "x"}), "spec.template.spec.containers[0]"),
    (
        "bad quantity",
        with_template(trainer={"resources": {"requests": {"cpu": "lots"}}}),
        f"{TRAINER}.resources.requests.cpu",
    ),
    (
        "env entry without name",
        with_template(trainer={"env": [{"value": "x"}]}),
        "spec.template.spec.containers[0].env[0].name",
    ),
    ("tolerations not a list", with_template(tolerations="all"), "spec.template.spec.tolerations"),
    (
        "port as text",
        with_template(trainer={"ports": [{"containerPort": "http"}]}),
        "spec.template.spec.containers[0].ports[0].containerPort",
    ),
    (
        "ephemeral containers",
        with_template(ephemeralContainers=[{"name": "dbg", "image": "busybox"}]),
        "spec.template.spec.ephemeralContainers",
    ),
]


@pytest.mark.parametrize(("what", "body", "field"), CASES, ids=[c[0] for c in CASES])
def test_apiserver_refuses_bad_spec_naming_the_field(
    what: str, body: dict[str, Any], field: str, kubectl: Any, namespace: str, crd: Any
) -> None:
    out = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    assert out.returncode != 0, f"{what}: accepted"
    assert "is invalid" in out.stderr or "error" in out.stderr.lower()
    assert field in out.stderr, f"{what}: {out.stderr}"


@pytest.mark.parametrize(
    ("other", "says"),
    [
        ({"queueName": "team"}, "gangBackend PodGroup cannot be combined with queueName"),
        ({"schedulerName": "volcano"}, "gangBackend PodGroup needs the kube-scheduler"),
        ({"gang": False}, "gangBackend PodGroup is gang admission: it cannot go with gang: false"),
    ],
)
def test_pod_group_backend_with_another_admission_system_is_refused_saying_why(
    other: dict[str, Any], says: str, kubectl: Any, namespace: str, crd: Any
) -> None:
    body = with_spec(scheduling={"gangBackend": "PodGroup", **other})
    out = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    assert out.returncode != 0 and "spec.scheduling.gangBackend" in out.stderr and says in out.stderr, out.stderr
    alone = with_spec(scheduling={"gangBackend": "PodGroup"})
    kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=yaml.safe_dump(alone))


def test_full_pod_template_is_accepted_as_written(kubectl: Any, namespace: str, crd: Any) -> None:
    """What the schema allows is kept: nothing of a valid template is pruned on the way in."""
    body = with_template(
        {"labels": {"team": "a"}, "annotations": {"note": "x"}},
        trainer={
            "resources": {"requests": {"cpu": "500m", "memory": 1073741824}, "limits": {"cpu": 2}},
            "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/"}},
        },
        initContainers=[{"name": "fetch", "image": "busybox"}],
        tolerations=[{"key": "k", "operator": "Exists"}],
        volumes=[{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
    )
    body["metadata"]["name"] = "full"
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    got = yaml.safe_load(kubectl("get", "-n", namespace, "tj/full", "-o", "yaml").stdout)
    assert got["spec"]["template"] == body["spec"]["template"]


def test_good_spec_is_accepted_with_defaults(kubectl: Any, namespace: str, crd: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job_manifest("good")))
    got = yaml.safe_load(kubectl("get", "-n", namespace, "tj/good", "-o", "yaml").stdout)
    assert got["spec"]["runPolicy"]["backoffLimit"] == 3 and got["spec"]["procsPerPod"] == "auto"
    assert got["spec"]["scheduling"]["gang"] is True and got["spec"]["metrics"]["port"] == 9400
    assert got["spec"]["scheduling"]["gangBackend"] == "Gates"  # phalanx's gates stay the default
