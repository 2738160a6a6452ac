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
