"""The operator layer over fake caches and a fake API: refused creates become the job's ReplicaFailure
and back off; transient API errors and failing reconciles back off and, repeated, set ReconcileError."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from phalanx.controller.caches import Caches
from phalanx.controller.kube import Gone
from phalanx.controller.operator import REPORT_AFTER_FAILURES, Operator
from phalanx.core import conditions as cond
from phalanx.core.observe import job_view

KEY = ("ns", "j")
PSA = 'pods "j-a1-worker-0" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true'


def refused(status: int, message: str) -> ApiException:
    return ApiException(status=status, reason="x", body=json.dumps({"message": message}))


class FakeKube:
    def __init__(self, op: Operator, indices: dict[str, Any], create_error: BaseException | None = None) -> None:
        self.op, self.indices, self.create_error = op, indices, create_error
        self.created: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.delete_error: BaseException | None = None
        self.status_error: BaseException | None = None
        self.force_deleted: list[tuple[str, str]] = []

    async def create(self, manifest: dict[str, Any]) -> bool:
        if manifest["kind"] == "Pod" and self.create_error is not None:
            raise self.create_error
        self.created.append(manifest["metadata"]["name"])
        return True

    async def patch_job_status(self, ns: str, name: str, status: dict[str, Any], rv: str) -> str:
        if self.status_error is not None:
            raise self.status_error
        self.statuses.append(status)
        body = self.indices["job_index"][KEY][0]
        new_rv = f"{body['metadata']['resourceVersion']}.{len(self.statuses)}"  # opaque, as the API's are
        meta = {**body["metadata"], "resourceVersion": new_rv}
        self.indices["job_index"][KEY] = [{**body, "status": {**body["status"], **status}, "metadata": meta}]
        return new_rv

    async def post_event(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))

    async def delete_pod(self, ns: str, name: str, uid: str) -> None:
        if self.delete_error is not None:
            raise self.delete_error


def operator(create_error: BaseException | None = None) -> tuple[Operator, FakeKube]:
    op = Operator(workers=1)
    body = {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "1"},
        "spec": {"framework": "pytorch", "replicas": 2, "template": {"spec": {"containers": [{"name": "trainer"}]}}},
        "status": {},
    }
    indices: dict[str, Any] = {
        "job_index": {KEY: [body]},
        "pod_index": {},
        "service_index": {KEY: [True]},
        "claim_index": {},
        "priority_index": {},
        "node_index": {},
        "node_health_index": {},
        "usage_index": {},
    }
    op.caches = Caches(indices)
    kube = FakeKube(op, indices, create_error)
    op.kube = kube  # type: ignore[assignment]
    return op, kube


def job_store(op: Operator) -> dict[Any, list[Any]]:
    """The job index the operator's caches read (FakeKube writes status into it)."""
    kube = op.kube
    assert isinstance(kube, FakeKube)
    store: dict[Any, list[Any]] = kube.indices["job_index"]
    return store


def status(op: Operator) -> Any:
    return job_view(job_store(op)[KEY][0]).status


def test_a_refused_create_reaches_status_and_the_retry_waits_for_the_backoff() -> None:
    op, kube = operator(refused(403, PSA))

    async def run() -> None:
        await op.reconcile(KEY)  # creates refused: remembered, job queued again
        assert op.refused.get(KEY) is not None and op.refused.get(KEY).count == 1  # type: ignore[union-attr]
        await op.reconcile(KEY)  # writes ReplicaFailure; the creates wait for the backoff
        assert op.refused.get(KEY).count == 1  # type: ignore[union-attr]

    asyncio.run(run())
    failure = cond.get(status(op), cond.REPLICA_FAILURE)
    assert failure is not None and failure.reason == "PodSecurityViolation"
    assert (
        failure.message.startswith("the apiserver refused Pod j-a1-worker-0 (and 1 more): ") and PSA in failure.message
    )
    assert ("Warning", "PodSecurityViolation") in kube.events


def test_a_transient_create_error_is_a_failed_reconcile_not_a_refusal() -> None:
    op, _ = operator(refused(503, "etcd leader changed"))
    with pytest.raises(ApiException):
        asyncio.run(op.reconcile(KEY))
    assert op.refused.get(KEY) is None


def test_repeated_reconcile_failures_set_reconcile_error_and_success_clears_it() -> None:
    op, kube = operator()
    boom = refused(500, "the server is on fire")

    async def run() -> None:
        for _ in range(REPORT_AFTER_FAILURES):
            await op._failed(KEY, boom)
        error = cond.get(status(op), cond.RECONCILE_ERROR)
        assert error is not None and error.status == "True" and "ApiException: the server is on fire" in error.message
        await op._failed(KEY, boom)  # the same error again: no second write
        assert len(kube.statuses) == 1
        await op.reconcile(KEY)  # succeeds, but the failure is still the operator's latest news
        assert cond.is_true(status(op), cond.RECONCILE_ERROR)
        op.errors.succeeded(KEY)
        await op.reconcile(KEY)

    asyncio.run(run())
    error = cond.get(status(op), cond.RECONCILE_ERROR)
    assert error is not None and (error.status, error.reason) == ("False", "Reconciled")
    assert ("Warning", "ReconcileFailed") in kube.events
    assert op.errors.get(KEY) is None


def test_a_job_deleted_while_it_is_reconciled_is_no_failed_reconcile() -> None:
    """Found by the fuzzer: the status write of a job deleted a moment before is a 404; that is the end of
    the job, not a reconcile to retry (its DELETED event forgets it), and nothing is created for it."""
    op, kube = operator()
    kube.status_error = Gone("ns/j")
    asyncio.run(op.reconcile(KEY))
    assert op.errors.get(KEY) is None and kube.created == [] and kube.events == []


def test_a_job_still_cached_at_the_version_our_write_replaced_is_not_acted_on() -> None:
    op, kube = operator()
    body = job_store(op)[KEY][0]

    async def run() -> None:
        await op.reconcile(KEY)  # writes attempt 1, conditional on resourceVersion "1"
        assert len(kube.statuses) == 1
        job_store(op)[KEY] = [body]  # the watch has not brought our write back yet
        await op.reconcile(KEY)
        assert len(kube.statuses) == 1  # nothing decided from the stale copy
        # Someone else's write came through: resourceVersions are opaque, so only equality counts.
        job_store(op)[KEY] = [{**body, "metadata": {**body["metadata"], "resourceVersion": "a0"}}]
        await op.reconcile(KEY)
        assert len(kube.statuses) == 2

    asyncio.run(run())
