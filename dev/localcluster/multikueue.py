"""MultiKueue across two local control planes: `connect(manager, worker)`.

Each cluster runs its own Kueue (`up --kueue`). On the manager this makes what Kueue's MultiKueue
needs to dispatch Workloads to the worker (Kueue's "Setup a MultiKueue environment", by hand):
- a Secret in kueue-system holding the worker's kubeconfig (the admin one, certificates embedded:
  Kueue refuses kubeconfigs that point at files) under the key `kubeconfig`;
- a MultiKueueCluster naming that Secret, a MultiKueueConfig listing the cluster, and an
  AdmissionCheck of controller kueue.x-k8s.io/multikueue with that config;
- a ResourceFlavor and a ClusterQueue `queue` whose quota is `quota` and which uses the check.
On the worker: a ResourceFlavor and a ClusterQueue of the same name and quota, without the check (the
worker is a plain Kueue cluster; MultiKueue creates Workloads there in the jobs' namespaces, and the
LocalQueues of those namespaces must exist on both sides, with the same names).

Both apiservers listen on 127.0.0.1 of this host, so the manager's Kueue reaches the worker's directly.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from localcluster import binaries
from localcluster.errors import ClusterError
from localcluster.kueue import NAMESPACE

API = "kueue.x-k8s.io/v1beta2"
CONTROLLER = "kueue.x-k8s.io/multikueue"
FIELD_MANAGER = "localcluster-multikueue"


def _kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    res = subprocess.run(
        [str(binaries.kubectl()), f"--kubeconfig={kubeconfig}", *args],
        input=input, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if res.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args[:2])} failed: {res.stderr.strip()[:400]}")
    return res.stdout


def apply(kubeconfig: Path, docs: list[dict[str, Any]]) -> None:
    _kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
             "-f", "-", input=yaml.safe_dump_all(docs))  # fmt: skip


def queue_objects(queue: str, quota: dict[str, str], admission_check: str | None = None) -> list[dict[str, Any]]:
    """A ResourceFlavor and a ClusterQueue `queue` (all namespaces) with `quota`, using the check if named."""
    resources = [{"name": r, "nominalQuota": q} for r, q in sorted(quota.items())]
    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "resourceGroups": [{"coveredResources": sorted(quota), "flavors": [{"name": queue, "resources": resources}]}],
    }
    if admission_check:
        spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": admission_check}]}
    return [
        {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": queue}},
        {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": queue}, "spec": spec},
    ]


def manager_objects(worker_kubeconfig: str, name: str, queue: str, quota: dict[str, str]) -> list[dict[str, Any]]:
    """What the manager needs to dispatch `queue`'s Workloads to the worker called `name`."""
    secret = f"{name}-kubeconfig"
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": NAMESPACE},
         "stringData": {"kubeconfig": worker_kubeconfig}},
        {"apiVersion": API, "kind": "MultiKueueCluster", "metadata": {"name": name},
         "spec": {"clusterSource": {"kubeConfig": {"locationType": "Secret", "location": secret}}}},
        {"apiVersion": API, "kind": "MultiKueueConfig", "metadata": {"name": name}, "spec": {"clusters": [name]}},
        {"apiVersion": API, "kind": "AdmissionCheck", "metadata": {"name": name},
         "spec": {"controllerName": CONTROLLER,
                  "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": name}}},
        *queue_objects(queue, quota, admission_check=name),
    ]  # fmt: skip


def _condition(kubeconfig: Path, resource: str, name: str, kind: str) -> dict[str, Any]:
    obj = json.loads(_kubectl(kubeconfig, "get", resource, name, "-o", "json"))
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def wait_active(kubeconfig: Path, resource: str, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        cond = _condition(kubeconfig, resource, name, "Active")
        if cond.get("status") == "True":
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{resource} {name} not Active after {timeout:.0f}s: {cond.get('reason')}: {cond.get('message')}"
            )
        time.sleep(0.5)


def connect(
    manager: Path, worker: Path, name: str = "worker", queue: str = "multikueue",
    quota: dict[str, str] | None = None, timeout: float = 60.0,
) -> None:  # fmt: skip
    """Make `worker` (its admin kubeconfig) a MultiKueue worker of `manager` for ClusterQueue `queue`;
    returns once Kueue on the manager reports the worker, the admission check and the queue Active."""
    quota = quota or {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "16"}
    apply(worker, queue_objects(queue, quota))
    apply(manager, manager_objects(worker.read_text(), name, queue, quota))
    for resource, obj in (("multikueueclusters", name), ("admissionchecks", name), ("clusterqueues", queue)):
        wait_active(manager, f"{resource}.kueue.x-k8s.io", obj, timeout)
    wait_active(worker, "clusterqueues.kueue.x-k8s.io", queue, timeout)


def disconnect(manager: Path, worker: Path, name: str = "worker", queue: str = "multikueue") -> None:
    """Remove what connect made (queues first: Kueue holds a ClusterQueue while Workloads use it)."""
    for kubeconfig, objects in (
        (manager, [f"clusterqueues.kueue.x-k8s.io/{queue}", f"resourceflavors.kueue.x-k8s.io/{queue}",
                   f"admissionchecks.kueue.x-k8s.io/{name}", f"multikueueconfigs.kueue.x-k8s.io/{name}",
                   f"multikueueclusters.kueue.x-k8s.io/{name}", f"secret/{name}-kubeconfig"]),
        (worker, [f"clusterqueues.kueue.x-k8s.io/{queue}", f"resourceflavors.kueue.x-k8s.io/{queue}"]),
    ):  # fmt: skip
        _kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait=false", "-n", NAMESPACE, *objects)
