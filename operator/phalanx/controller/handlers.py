"""kopf wiring only: indexes (the caches), event handlers that enqueue, startup and cleanup.

`python -m phalanx.controller` (or `kopf run -m phalanx.controller.main`) runs it. Tests build a
fresh registry per operator with `build_registry()` and run it under kopf.testing.KopfRunner.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from phalanx.api.models import GROUP, PLURAL, VERSION
from phalanx.controller import caches, essence
from phalanx.controller.caches import Caches
from phalanx.controller.operator import Operator
from phalanx.core import managedby, names

JOBS_RESOURCE = (GROUP, VERSION, PLURAL)
MANAGED = {names.LABEL_JOB: kopf.PRESENT}


def configure(settings: kopf.OperatorSettings, one_namespace: bool = False) -> None:
    # Progress annotations and handler results stay out of .status: status is the operator's own.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.phalanx.dev")
    # Only indexes and on.event handlers: no essence to compare (controller/essence.py).
    settings.persistence.diffbase_storage = essence.EmptyEssence(prefix="kopf.phalanx.dev")
    settings.posting.level = logging.ERROR  # kopf.event() still posts our own Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    # Watching one namespace needs no cluster-wide discovery of namespaces and CRDs (least privilege).
    settings.scanning.disabled = one_namespace


def build_registry(op: Operator, metrics_port: int | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure(settings, one_namespace=op.watch_namespace is not None)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per watch event is noise
        if metrics_port:
            start_http_server(metrics_port)
        await op.start({name: kwargs[name] for name in Caches.NAMES})

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In-cluster service account, else KUBECONFIG: the same sources the kubernetes client uses.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await op.stop()

    # Every index and event handler is `async def`: kopf runs sync handlers in a thread pool, and
    # these only compute small views and touch the work queue and the admitter, which live on the
    # event loop and are not thread-safe (asyncio.Event.set() from a thread fails under load).
    # --- caches -----------------------------------------------------------------------------------
    @kopf.index(*JOBS_RESOURCE, registry=registry, id=Caches.JOBS)
    async def job_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        snapshot = {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
        return {(kw["namespace"], kw["name"]): snapshot}

    @kopf.index("pods", labels=MANAGED, registry=registry, id=Caches.PODS)
    async def pod_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        return {caches.job_key_of_pod(kw["labels"], kw["namespace"]): caches.pod_entry(body)}

    @kopf.index("services", labels=MANAGED, registry=registry, id=Caches.SERVICES)
    async def service_index(**kw: Any) -> dict[Any, Any]:
        return {caches.job_key_of_pod(kw["labels"], kw["namespace"]): True}

    @kopf.index("nodes", registry=registry, id=Caches.NODES)
    async def node_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        return {kw["name"]: caches.node_entry(body, op.node_signals)}

    @kopf.index("nodes", registry=registry, id=Caches.NODE_HEALTH)
    async def node_health_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        return {kw["name"]: caches.node_health(body)}

    @kopf.index("pods", registry=registry, id=Caches.USAGE, when=lambda body, **_: caches.usage_entry(body) is not None)
    async def usage_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        return {(kw["namespace"], kw["name"]): caches.usage_entry(body)}

    @kopf.index("persistentvolumeclaims", registry=registry, id=Caches.CLAIMS)
    async def claim_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        return {(kw["namespace"], kw["name"]): caches.claim_entry(body)}

    @kopf.on.event("persistentvolumeclaims", registry=registry)
    async def claim_event(**kw: Any) -> None:
        op.caches_warm()
        op.claim_changed(kw["namespace"], kw["name"])

    @kopf.index("scheduling.k8s.io", "v1", "priorityclasses", registry=registry, id=Caches.PRIORITIES)
    async def priority_index(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
        return {kw["name"]: int(body.get("value", 0))}

    # --- triggers ---------------------------------------------------------------------------------
    @kopf.on.event(*JOBS_RESOURCE, registry=registry)
    async def job_event(body: kopf.Body, **kw: Any) -> None:
        op.caches_warm()
        if managedby.role(body) is managedby.Role.FOREIGN:
            return  # spec.managedBy names another controller: never reconciled here
        op.enqueue((kw["namespace"], kw["name"]))
        if kw["type"] == "DELETED":
            op.admitter.wake()

    @kopf.on.event("pods", labels=MANAGED, registry=registry)
    async def pod_event(**kw: Any) -> None:
        op.caches_warm()
        op.enqueue(caches.job_key_of_pod(kw["labels"], kw["namespace"]))

    def frees_accelerators(body: kopf.Body, type: str | None, **_: Any) -> bool:
        ended = type == "DELETED" or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        return ended and bool(caches.accelerator_requests(body.get("spec") or {}))

    @kopf.on.event("pods", registry=registry, when=frees_accelerators)
    async def accelerator_pod_ended(**_: Any) -> None:
        op.caches_warm()
        op.admitter.wake()  # its GPUs/TPUs are free: a waiting gang may fit now

    @kopf.on.event("services", labels=MANAGED, registry=registry)
    async def service_event(**kw: Any) -> None:
        op.caches_warm()
        op.enqueue(caches.job_key_of_pod(kw["labels"], kw["namespace"]))

    @kopf.on.event("nodes", registry=registry)
    async def node_event(body: kopf.Body, **kw: Any) -> None:
        op.caches_warm()
        deleted = kw["type"] == "DELETED"
        view = None if deleted else caches.node_entry(body, op.node_signals)
        op.admitter.node_changed(kw["name"], view)
        op.node_changed(kw["name"], None if deleted else caches.node_health(body))
        op.node_unhealthy_changed(kw["name"], view.unhealthy if view is not None else None)

    essence.check_unused(registry)
    return registry
