"""The Kueue objects the tests set up: a LocalQueue that is Active, and the removal of a test's
ClusterQueue and ResourceFlavor (both named after the test's namespace, so tests never share one)."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.testing import wait_for

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"


def local_queue(custom: client.CustomObjectsApi, namespace: str, cluster_queue: str, name: str = "team") -> None:
    """Create the LocalQueue and wait until Kueue reports it Active (its ClusterQueue is ready)."""
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue", "metadata": {"name": name},
        "spec": {"clusterQueue": cluster_queue},
    })  # fmt: skip

    def active() -> bool:
        lq = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", name)
        return any(c["type"] == "Active" and c["status"] == "True" for c in lq.get("status", {}).get("conditions", []))

    wait_for(active, timeout=60, what=f"LocalQueue {name} Active")


def delete_cluster_queue(custom: client.CustomObjectsApi, name: str) -> None:
    """The ClusterQueue and the ResourceFlavor of this name, if they exist."""
    for plural in ("clusterqueues", "resourceflavors"):
        try:
            custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
        except ApiException as e:
            if e.status != 404:
                raise


H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # the default profile's H100 kwok nodes


def make_queue(
    custom: client.CustomObjectsApi, namespace: str, name: str, quotas: dict[str, str],
    node_labels: dict[str, str] | None = None, tolerations: list[dict[str, str]] | None = None,
    preemption: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """A ResourceFlavor and a ClusterQueue, both `name`, with `quotas` (resource -> nominal quota) in one
    flavor, and LocalQueue `team` on it in the namespace, Active."""
    flavor: dict[str, object] = {}
    if node_labels:
        flavor["nodeLabels"] = node_labels
    if tolerations:
        flavor["tolerations"] = tolerations
    custom.create_cluster_custom_object(GROUP, VERSION, "resourceflavors", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": name},
        **({"spec": flavor} if flavor else {}),
    })  # fmt: skip
    spec: dict[str, object] = {"namespaceSelector": {}, "resourceGroups": [{
        "coveredResources": list(quotas),
        "flavors": [{"name": name, "resources": [{"name": r, "nominalQuota": q} for r, q in quotas.items()]}],
    }]}  # fmt: skip
    if preemption:
        spec["preemption"] = preemption
    custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec,
    })  # fmt: skip
    local_queue(custom, namespace, name)
    return name


def drop_queue(api_client: client.ApiClient, namespace: str, name: str) -> None:
    """The test's jobs and pods, then its ClusterQueue and ResourceFlavor (Kueue's finalizers hold those
    until no Workload uses them)."""
    client.CustomObjectsApi(api_client).delete_collection_namespaced_custom_object(
        "phalanx.dev", "v1alpha1", namespace, "trainingjobs"
    )
    client.CoreV1Api(api_client).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    delete_cluster_queue(client.CustomObjectsApi(api_client), name)
