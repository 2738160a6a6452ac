"""The only module that talks to the Kubernetes API (besides kopf's own watches).

The official `kubernetes` client is synchronous; every call runs in a bounded thread pool so
nothing blocks kopf's event loop, and pod creation for a gang fans out concurrently. This keeps
the one well-known client (typed models, auth plugins, in-cluster config) while matching the
throughput of an async client for our request pattern (see docs/design.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from phalanx.api.models import GROUP, PLURAL, VERSION
from phalanx.controller.slots import CREATE, EVENT, LEASE, UNGATE, WRITE, PrioritySlots
from phalanx.core.kueue import GROUP as KUEUE_GROUP
from phalanx.core.kueue import VERSION as KUEUE_VERSION
from phalanx.core.names import FIELD_MANAGER, LABEL_JOB
from phalanx.core.podgroup import GROUP as POD_GROUP_API
from phalanx.core.refusal import is_refusal

T = TypeVar("T")


class Conflict(Exception):
    """The object changed since it was read (resourceVersion precondition failed)."""


class NotLeading(Exception):
    """A write was refused in this process: this replica does not hold the leader lease (a standby, or a
    leader that could not renew in time). Nothing was sent."""


class Gone(Exception):
    """The object was deleted since it was read: its DELETED event is on its way."""


class Kube:
    def __init__(self, concurrency: int = 16) -> None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            # Read KUBECONFIG now: the client library only reads it once, at import.
            kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        cfg = kubernetes.client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = concurrency
        self.api = kubernetes.client.ApiClient(cfg)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.coordination = kubernetes.client.CoordinationV1Api(self.api)
        # Asked before every write: only the leader acts (controller/election.py sets it). The one
        # place every create, delete, patch and Event passes, so no code path can act from a standby.
        self.may_write: Callable[[], bool] = lambda: True
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube")
        self._slots = PrioritySlots(concurrency)

    async def _run(self, priority: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._call(priority, fn, *args, gated=True, **kwargs)

    async def _call(self, priority: int, fn: Callable[..., T], *args: Any, gated: bool = False, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        async with self._slots.slot(priority):  # so the pool's threads are free whenever a slot is
            # Asked once the slot is ours, right before sending: waiting for a slot can take a while.
            if gated and not self.may_write():
                raise NotLeading(getattr(fn, "__name__", "write"))
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create a Pod, Service or PVC; False when it already exists (creation is idempotent)."""
        ns, kind = manifest["metadata"]["namespace"], manifest["kind"]
        fn = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
        }[kind]
        try:
            await self._run(CREATE, fn, ns, manifest)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def delete_pod(self, namespace: str, name: str, uid: str, grace_seconds: int | None = None) -> None:
        """Graceful by default: the pod's own terminationGracePeriodSeconds lets the trainer checkpoint.
        grace_seconds=0 for a pod whose node is lost (no kubelet will confirm a graceful delete). Only
        the pod of this UID: a delete decided on a stale cache never removes a newer pod of the same name."""
        body = kubernetes.client.V1DeleteOptions(
            grace_period_seconds=grace_seconds, preconditions=kubernetes.client.V1Preconditions(uid=uid)
        )
        try:
            await self._run(WRITE, self.core.delete_namespaced_pod, name, namespace, body=body)
        except ApiException as exc:
            # 404: gone already; 409: the precondition failed, the name is another pod's now.
            if exc.status not in (404, 409):
                raise

    async def relabel_pod(self, namespace: str, name: str, uid: str, labels: dict[str, str]) -> None:
        """Set labels on the pod of this UID only (a JSON patch whose `test` op is the precondition)."""
        patch: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
        patch += [{"op": "add", "path": "/metadata/labels/" + k.replace("~", "~0").replace("/", "~1"), "value": v}
                  for k, v in labels.items()]  # fmt: skip
        try:
            await self._run(WRITE, self.core.patch_namespaced_pod, name, namespace, patch)
        except ApiException as exc:
            # 404: gone; 422: the test failed, the name is another pod's now. Both: nothing to move.
            if exc.status not in (404, 422):
                raise

    async def node_exists(self, name: str) -> bool:
        """Whether the node exists, asked of the apiserver: the node cache may lag the pod cache."""
        try:
            await self._call(WRITE, self.core.read_node, name)  # a read: a standby may ask too
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- the leader Lease (never gated: a standby must be able to contend for it) ---------------------
    async def read_lease(self, namespace: str, name: str) -> kubernetes.client.V1Lease | None:
        try:
            lease: kubernetes.client.V1Lease = await self._call(
                LEASE, self.coordination.read_namespaced_lease, name, namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    async def write_lease(self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None) -> str:
        """Create the Lease (resource_version None) or replace it only if it is unchanged since read;
        the new resourceVersion. Conflict when someone else wrote or created it first."""
        body = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            if resource_version is None:
                result = await self._call(LEASE, self.coordination.create_namespaced_lease, namespace, body)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                result = await self._call(LEASE, self.coordination.replace_namespaced_lease, name, namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"lease {namespace}/{name}") from exc
            raise
        return str(result.metadata.resource_version)

    async def ungate_pod(self, namespace: str, name: str, also: list[dict[str, Any]] | None = None) -> None:
        """Lift the pod's scheduling gates. `also`: JSON-patch ops sent in the same atomic patch (the
        admitter's node preference, which the API accepts only while the pod is gated); if the
        server refuses them, the gates are lifted alone."""
        patch: list[dict[str, Any]] = [{"op": "remove", "path": "/spec/schedulingGates"}]
        for ops in ([*patch, *also], patch) if also else (patch,):
            try:
                await self._run(UNGATE, self.core.patch_namespaced_pod, name, namespace, ops)
                return
            except ApiException as exc:
                # 404: gone; 422: no gates left to remove (already admitted), or `also` refused.
                if exc.status == 404:
                    return
                if exc.status != 422:
                    raise

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> str:
        """Write the whole status in one call, only if the job is still at the version we read."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            result = await self._run(
                WRITE,
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body,
                field_manager=FIELD_MANAGER,  # managedFields then tell our status writes from anyone else's
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{namespace}/{name}") from exc
            if exc.status == 404:
                raise Gone(f"{namespace}/{name}") from exc
            raise
        return str(result["metadata"]["resourceVersion"])

    async def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the TrainingJob, as `kubectl describe tj` shows them."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "phalanx-operator"},
            "reportingComponent": "phalanx.dev/operator",
        }
        try:
            await self._run(EVENT, self.core.create_namespaced_event, meta["namespace"], event)
        except (ApiException, NotLeading) as exc:  # events are best effort; never fail a reconcile for one
            logging.getLogger("phalanx").debug("event not posted: %s", api_error_message(exc))

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await self._run(
                WRITE,
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- Kueue (core/kueue.py): its Workloads and ResourceFlavors ---------------------------------
    async def list_workloads(self, namespace: str, job: str) -> list[dict[str, Any]]:
        result = await self._call(  # reads are never gated
            WRITE, self.custom.list_namespaced_custom_object, KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
            label_selector=f"{LABEL_JOB}={job}",
        )  # fmt: skip
        return list(result.get("items") or [])

    async def create_workload(self, manifest: dict[str, Any]) -> None:
        ns = manifest["metadata"]["namespace"]
        try:
            await self._run(
                CREATE, self.custom.create_namespaced_custom_object, KUEUE_GROUP, KUEUE_VERSION, ns, "workloads",
                manifest,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def delete_workload(self, namespace: str, name: str) -> None:
        try:
            await self._run(
                WRITE, self.custom.delete_namespaced_custom_object, KUEUE_GROUP, KUEUE_VERSION, namespace,
                "workloads", name,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def apply_workload_status(self, manifest: dict[str, Any]) -> None:
        """Server-side apply to the Workload's status: only the fields in `manifest` become ours."""
        meta = manifest["metadata"]
        try:
            await self._run(
                WRITE, self.custom.patch_namespaced_custom_object_status, KUEUE_GROUP, KUEUE_VERSION,
                meta["namespace"], "workloads", meta["name"], manifest, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def get_resource_flavor(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                WRITE, self.custom.get_cluster_custom_object, KUEUE_GROUP, KUEUE_VERSION, "resourceflavors", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def get_workload_priority_class(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                WRITE, self.custom.get_cluster_custom_object, KUEUE_GROUP, KUEUE_VERSION, "workloadpriorityclasses",
                name,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    # --- native gang scheduling (core/podgroup.py): scheduling.k8s.io Workloads and PodGroups ----------
    async def list_scheduling(self, namespace: str, version: str, plural: str, job: str) -> list[dict[str, Any]]:
        result = await self._call(  # reads are never gated
            WRITE, self.custom.list_namespaced_custom_object, POD_GROUP_API, version, namespace, plural,
            label_selector=f"{LABEL_JOB}={job}",
        )  # fmt: skip
        return list(result.get("items") or [])

    async def create_scheduling(self, version: str, manifest: dict[str, Any]) -> None:
        """Create a Workload or PodGroup; one that exists already is left as it is (names are per attempt)."""
        ns, plural = manifest["metadata"]["namespace"], manifest["kind"].lower() + "s"
        try:
            await self._run(
                CREATE, self.custom.create_namespaced_custom_object, POD_GROUP_API, version, ns, plural, manifest
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def delete_scheduling(self, namespace: str, version: str, plural: str, name: str) -> None:
        try:
            await self._run(
                WRITE, self.custom.delete_namespaced_custom_object, POD_GROUP_API, version, namespace, plural, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def pod_spec(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod's spec as the API writes it (camelCase), None when it is gone."""
        try:
            pod = await self._call(UNGATE, self.core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec: dict[str, Any] = self.api.sanitize_for_serialization(pod.spec)
        return spec

    async def place_and_ungate_pod(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """Add `ops` (the flavor Kueue assigned) and lift the gates in one atomic patch: never one without
        the other, so no pod of a Kueue job schedules outside its flavor."""
        patch = [*ops, {"op": "remove", "path": "/spec/schedulingGates"}]
        try:
            await self._run(UNGATE, self.core.patch_namespaced_pod, name, namespace, patch)
        except ApiException as exc:
            if exc.status != 404:  # 404: gone (a new attempt); a 422 is a real problem and is raised
                raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()


def refusal_of(exc: BaseException) -> tuple[int | None, str] | None:
    """(HTTP status, message) when `exc` is a verdict on the object sent: the apiserver's 4xx (but 409 and
    429), or the client's own validation (status None). None for a transient failure (5xx, network)."""
    if isinstance(exc, ApiException):
        code = int(exc.status) if exc.status else None
        return (code, api_error_message(exc)) if code is not None and is_refusal(code) else None
    if isinstance(exc, (ValueError, TypeError)):  # the client refused to serialize or validate the body
        return None, str(exc).replace("\n", " ")[:1024]
    return None


def api_error_message(exc: BaseException) -> str:
    if isinstance(exc, ApiException) and exc.body:
        try:
            return str(json.loads(exc.body).get("message", exc.body))
        except (ValueError, AttributeError):
            return str(exc.body)
    return str(exc)
