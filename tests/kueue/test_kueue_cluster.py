"""Real Kueue next to the local control plane (`python -m localcluster up --kueue`): its manager runs,
its webhooks answer the apiserver, and its controllers make queues Active."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import kueue
from localcluster.testing import wait_for
from tests.kueue.queues import GROUP, VERSION, delete_cluster_queue

pytestmark = pytest.mark.kueue


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def cluster_queue(custom: client.CustomObjectsApi, namespace: str) -> Iterator[str]:
    """A ClusterQueue named after the test's namespace (so tests never share one), removed after."""
    name = f"cq-{namespace}"
    yield name
    delete_cluster_queue(custom, name)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_manager_runs_and_reports_ready(cluster: Any) -> None:
    if cluster.info is None:
        pytest.skip("reusing a cluster via PHALANX_TEST_KUBECONFIG: Kueue is whatever runs there")
    state = cluster.info.dir / "cluster.json"
    record = json.loads(state.read_text())["kueue"]
    assert record["version"] == kueue.version()
    assert kueue.ready(record["ports"]["kueue-health"])
    real = cluster.info.profile == "real"
    assert record["podsReadyTimeout"] == (kueue.PODS_READY_TIMEOUT_REAL_NODE if real else kueue.PODS_READY_TIMEOUT)
    manager_config = yaml.safe_load((cluster.info.dir / "config" / "kueue.yaml").read_text())
    assert manager_config["waitForPodsReady"]["timeout"] == record["podsReadyTimeout"]


def test_webhook_refuses_a_bad_cluster_queue(custom: client.CustomObjectsApi, cluster_queue: str) -> None:
    # One resource covered by two resource groups: the CRD's schema and CEL rules accept it, Kueue's
    # validating webhook (reached at https://127.0.0.1:PORT) does not.
    quota = [{"name": "cpu", "nominalQuota": "1"}]
    group = {"coveredResources": ["cpu"], "flavors": [{"name": "a", "resources": quota}]}
    other = {"coveredResources": ["cpu"], "flavors": [{"name": "b", "resources": quota}]}
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": cluster_queue},
        "spec": {"resourceGroups": [group, other]},
    }
    with pytest.raises(ApiException) as refused:
        custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", bad)
    assert refused.value.status == 403, refused.value.body  # how the apiserver reports a webhook denial
    assert 'admission webhook \\"vclusterqueue.kb.io\\" denied the request' in refused.value.body, refused.value.body
    assert "coveredResources[0]: Duplicate value" in refused.value.body, refused.value.body


def test_cluster_queue_and_local_queue_become_active(
    custom: client.CustomObjectsApi, namespace: str, cluster_queue: str
) -> None:
    custom.create_cluster_custom_object(
        GROUP, VERSION, "resourceflavors",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": cluster_queue}},
    )  # fmt: skip
    created = custom.create_cluster_custom_object(
        GROUP, VERSION, "clusterqueues",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": cluster_queue,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "64"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": "16"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )  # fmt: skip
    # Kueue's mutating webhook defaults fields the request left out.
    assert created["spec"].get("queueingStrategy") == "BestEffortFIFO"
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "localqueues",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue", "metadata": {"name": "team"},
         "spec": {"clusterQueue": cluster_queue}},
    )  # fmt: skip

    def active_cq() -> dict[str, Any] | None:
        cq = custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", cluster_queue)
        return cq if condition(cq, "Active").get("status") == "True" else None

    def active_lq() -> dict[str, Any] | None:
        lq = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", "team")
        return lq if condition(lq, "Active").get("status") == "True" else None

    assert condition(wait_for(active_cq, timeout=60, what="ClusterQueue Active"), "Active")["reason"] == "Ready"
    assert condition(wait_for(active_lq, timeout=60, what="LocalQueue Active"), "Active")["reason"] == "Ready"
