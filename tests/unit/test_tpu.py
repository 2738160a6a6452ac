"""TPU slice math, validation and the pods the TPU adapter builds (phalanx.core.frameworks.tpu)."""

from __future__ import annotations

from typing import Any

import pytest

from phalanx.api.models import TPUResources, TrainingJobSpec
from phalanx.core.frameworks.tpu import (
    ACCELERATOR_LABEL,
    NODE_POOL_LABEL,
    TOPOLOGY_LABEL,
    TPU_RESOURCE,
    TensorFlowTPU,
    accelerator_type,
    chips,
    chips_per_host,
    hosts,
)
from phalanx.core.gang import Gang
from phalanx.core.pods import build_pod
from phalanx.core.validation import validate


def tpu(accelerator: str, topology: str, chips_per_host: int | None = None) -> TPUResources:
    return TPUResources(accelerator=accelerator, topology=topology, chips_per_host=chips_per_host)


def spec(accelerator: str, topology: str, replicas: int, chips_per_host: int | None = None) -> TrainingJobSpec:
    resources: dict[str, Any] = {"accelerator": accelerator, "topology": topology}
    if chips_per_host:
        resources["chipsPerHost"] = chips_per_host
    return TrainingJobSpec.model_validate(
        {
            "framework": "tensorflow",
            "strategy": "tpu",
            "replicas": replicas,
            "resources": {"tpu": resources},
            "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}},
        }
    )


@pytest.mark.parametrize(
    ("accelerator", "topology", "replicas", "per_host", "n_hosts"),
    [
        ("tpu-v5-lite-podslice", "1x1", None, 1, 1),
        ("tpu-v5-lite-podslice", "2x2", None, 4, 1),
        ("tpu-v5-lite-podslice", "2x4", None, 8, 1),  # one ct5lp-hightpu-8t host, preferred
        ("tpu-v5-lite-podslice", "2x4", 1, 8, 1),
        ("tpu-v5-lite-podslice", "2x4", 2, 4, 2),  # or two ct5lp-hightpu-4t hosts
        ("tpu-v5-lite-podslice", "4x4", None, 4, 4),
        ("tpu-v5-lite-podslice", "16x16", None, 4, 64),
        ("tpu-v6e-slice", "2x4", 2, 4, 2),
        ("tpu-v4-podslice", "2x2x1", None, 4, 1),
        ("tpu-v4-podslice", "2x2x4", None, 4, 4),
        ("tpu-v5p-slice", "2x4x4", None, 4, 8),
        ("tpu-v4-podslice", "2x2x2", 1, 4, 2),  # v4 2x2x2 is always 2 hosts, whatever replicas says
    ],
)
def test_hosts_and_chips_per_host_follow_the_topology(
    accelerator: str, topology: str, replicas: int | None, per_host: int, n_hosts: int
) -> None:
    t = tpu(accelerator, topology)
    assert chips_per_host(t, replicas) == per_host
    assert hosts(t, replicas) == n_hosts
    assert chips(topology) == per_host * n_hosts


def test_chips_per_host_given_explicitly_wins() -> None:
    t = tpu("tpu-v5-lite-podslice", "2x4", chips_per_host=4)
    assert chips_per_host(t) == 4 and hosts(t) == 2


@pytest.mark.parametrize(
    ("accelerator", "topology", "expected"),
    [
        ("tpu-v5-lite-podslice", "2x4", "v5litepod-8"),
        ("tpu-v6e-slice", "4x4", "v6e-16"),
        ("tpu-v4-podslice", "2x2x2", "v4-16"),  # v4 names count TensorCores, 2 per chip
        ("tpu-v5p-slice", "2x2x1", "v5p-8"),
        ("tpu-future", "2x2", "tpu-future"),
    ],
)
def test_accelerator_type_is_the_cloud_tpu_name(accelerator: str, topology: str, expected: str) -> None:
    assert accelerator_type(tpu(accelerator, topology)) == expected


@pytest.mark.parametrize("replicas", [1, 2])
def test_v5e_2x4_accepts_one_or_two_hosts(replicas: int) -> None:
    assert validate("t", spec("tpu-v5-lite-podslice", "2x4", replicas)) == []


def test_replica_mismatch_is_refused_with_the_valid_counts() -> None:
    (problem,) = validate("t", spec("tpu-v5-lite-podslice", "2x4", 3))
    assert problem == (
        "spec.replicas: TPU topology 2x4 on tpu-v5-lite-podslice is 1 host(s) of 8 chips or 2 host(s) of 4 chips "
        "(one pod per host), so replicas must be 1 or 2, not 3"
    )
    (problem,) = validate("t", spec("tpu-v5-lite-podslice", "4x4", 2))
    assert "is 4 host(s) of 4 chips" in problem and "replicas must be 4, not 2" in problem


def test_chips_per_host_that_does_not_divide_the_slice_is_refused() -> None:
    (problem,) = validate("t", spec("tpu-v5-lite-podslice", "2x4", 2, chips_per_host=3))
    assert "has 8 chips, not a multiple of chipsPerHost=3" in problem
    (problem,) = validate("t", spec("tpu-v5-lite-podslice", "2x4", 2, chips_per_host=1))
    assert "replicas must be 8, not 2" in problem


def test_topology_of_the_wrong_shape_is_refused() -> None:
    (problem,) = validate("t", spec("tpu-v4-podslice", "2x4", 2))
    assert "tpu-v4-podslice slices have 3-D topologies such as 2x2x2, not 2x4" in problem


def test_pods_get_selectors_chips_toleration_env_and_one_node_pool() -> None:
    s = spec("tpu-v5-lite-podslice", "2x4", 2)
    pod = build_pod(Gang("t", "ns", "uid", s, 1), 1)
    podspec = pod["spec"]
    assert podspec["nodeSelector"] == {ACCELERATOR_LABEL: "tpu-v5-lite-podslice", TOPOLOGY_LABEL: "2x4"}
    trainer = podspec["containers"][0]
    assert trainer["resources"]["requests"][TPU_RESOURCE] == "4" == trainer["resources"]["limits"][TPU_RESOURCE]
    assert {"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in podspec["tolerations"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["TPU_WORKER_ID"] == "1"
    assert env["TPU_WORKER_HOSTNAMES"] == "t-worker-0.t.ns.svc,t-worker-1.t.ns.svc"
    assert env["TPU_ACCELERATOR_TYPE"] == "v5litepod-8" and env["TPU_TOPOLOGY"] == "2x4"
    assert {p["containerPort"] for p in trainer["ports"]} >= {8470, 8471}
    (term,) = podspec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == NODE_POOL_LABEL
    assert term["labelSelector"]["matchLabels"] == {"phalanx.dev/job-name": "t", "phalanx.dev/attempt": "1"}


def test_single_host_slice_has_no_node_pool_rule() -> None:
    pod = build_pod(Gang("t", "ns", "uid", spec("tpu-v5-lite-podslice", "2x4", 1), 1), 0)
    assert pod["spec"]["containers"][0]["resources"]["limits"][TPU_RESOURCE] == "8"
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["spec"]["affinity"]["podAffinity"]


def test_adapter_is_the_tpu_strategy() -> None:
    assert TensorFlowTPU().ports()[0]["containerPort"] == 8470
