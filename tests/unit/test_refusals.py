"""Refused creates, failing reconciles and gangs that can never fit: each ends up in the job's status
(pure core), and the operator's per-job backoff grows and resets as documented."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from phalanx.api.models import TrainingJobStatus
from phalanx.controller import backoff as backoff_module
from phalanx.controller.backoff import Backoff
from phalanx.core import conditions as cond
from phalanx.core import refusal as rf
from phalanx.core.admission import GPU, NodeView, never_fits
from phalanx.core.reconcile import AdmissionNote, reconcile
from phalanx.core.refusal import CreateRefusal
from tests.unit.specs import T0, job, pod, spec
from tests.unit.test_admission import gang, gpu_node

PSA = CreateRefusal(
    rf.POD_SECURITY,
    'the apiserver refused Pod j-worker-0 (and 1 more): pods "j-worker-0" is forbidden: violates PodSecurity '
    '"restricted:latest": allowPrivilegeEscalation != false (container "logs" must set ...)',
)


def test_a_refused_create_is_named_in_status_with_the_apiservers_message() -> None:
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [], True, T0, refusal=PSA)
    s = plan.status
    failure = cond.get(s, cond.REPLICA_FAILURE)
    assert failure is not None and failure.status == "True"
    assert (failure.reason, failure.message) == (PSA.reason, PSA.message)
    admitted = cond.get(s, cond.ADMITTED)
    assert admitted is not None and admitted.reason == PSA.reason and PSA.message in admitted.message
    running = cond.get(s, cond.RUNNING)
    assert running is not None and running.reason == PSA.reason
    assert ("Warning", PSA.reason) in [(e.type, e.reason) for e in plan.events]
    assert [m["kind"] for m in plan.create] == ["Pod", "Pod"]  # still planned: the operator backs off
    assert plan.requeue_after is not None  # the startup deadline's clock runs


def test_replica_failure_clears_once_every_pod_exists() -> None:
    refused = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [], True, T0, refusal=PSA).status
    pods = [pod(0, phase="Pending", gated=True), pod(1, phase="Pending", gated=True)]
    s = reconcile(job(spec(), refused), pods, True, T0 + timedelta(seconds=5)).status
    failure = cond.get(s, cond.REPLICA_FAILURE)
    assert failure is not None and (failure.status, failure.reason) == ("False", "PodsCreated")
    assert cond.get(s, cond.ADMITTED).reason == "WaitingForAdmission"  # type: ignore[union-attr]


def test_startup_deadline_ends_the_wait_for_refused_pods_with_their_cause() -> None:
    j = job(spec(runPolicy={"startupDeadlineSeconds": 60}), TrainingJobStatus(attempt=1))
    first = reconcile(j, [], True, T0, refusal=PSA)
    assert not cond.is_true(first.status, cond.FAILED)
    later = reconcile(job(j.spec, first.status), [], True, T0 + timedelta(seconds=61), refusal=PSA)
    failed = cond.get(later.status, cond.FAILED)
    assert failed is not None and failed.status == "True" and failed.reason == PSA.reason
    assert "startupDeadlineSeconds=60" in failed.message and "violates PodSecurity" in failed.message
    assert not later.create  # a failed job creates nothing


def test_reconcile_error_is_kept_while_failing_and_cleared_after() -> None:
    s = TrainingJobStatus(attempt=1)
    cond.set_condition(s, cond.RECONCILE_ERROR, True, "ReconcileFailed", "boom", 1, T0)
    kept = reconcile(job(spec(), s), [pod(0), pod(1)], True, T0, failure="boom")
    assert cond.is_true(kept.status, cond.RECONCILE_ERROR)
    cleared = reconcile(job(spec(), s), [pod(0), pod(1)], True, T0)
    error = cond.get(cleared.status, cond.RECONCILE_ERROR)
    assert error is not None and (error.status, error.reason) == ("False", "Reconciled") and cleared.status_changed


def test_a_gang_that_can_never_fit_fails_before_any_pod_is_created() -> None:
    note = AdmissionNote("ExceedsClusterCapacity", "needs 16 nvidia.com/gpu ...", fatal=True)
    plan = reconcile(job(spec(resources={"gpus": 8})), [], False, T0, note)
    assert not plan.create and cond.get(plan.status, cond.FAILED).reason == "ExceedsClusterCapacity"  # type: ignore[union-attr]


def test_never_fits_judges_the_gang_against_the_empty_cluster() -> None:
    nodes = [gpu_node("a"), gpu_node("b")]
    assert never_fits(nodes, gang("fits", pods=2)) is None
    too_big = never_fits(nodes, gang("big", pods=3))
    assert too_big is not None and too_big.fatal and too_big.reason == "ExceedsClusterCapacity"
    assert "room for at most 2" in too_big.message
    busy = [NodeView("a", {GPU: 8}, {}, frozenset({GPU}), schedulable=False)]
    assert never_fits(busy, gang("later", pods=1)) is None  # not ready now is not never


TRAINER = {"name": "trainer", "image": "i"}


@pytest.mark.parametrize(
    ("template", "extra"),
    [
        ({"spec": {"containers": [{**TRAINER, "env": [{"value": "no name"}]}]}}, {}),
        ({"spec": {"containers": [TRAINER], "tolerations": "all"}}, {"resources": {"gpus": 1}}),
        ({"metadata": {"annotations": 5}, "spec": {"containers": [TRAINER]}}, {}),
        ({"spec": {"containers": [{**TRAINER, "resources": {"requests": "lots"}}]}}, {"resources": {"gpus": 1}}),
    ],
    ids=["env without name", "tolerations all", "annotations 5", "requests lots"],
)
def test_a_template_the_pod_builder_cannot_use_is_invalid_spec_not_an_exception(
    template: dict[str, Any], extra: dict[str, Any]
) -> None:
    # The four triggers the fuzzer found: the CRD's PodTemplateSpec schema refuses them now, but a job
    # that predates it (or a schema gap) still gets a verdict instead of no status at all.
    plan = reconcile(job(spec(template=template, **extra)), [], False, T0)
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "InvalidSpec" and "spec.template" in failed.message
    assert not plan.create


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        (403, 'pods "x" is forbidden: violates PodSecurity "restricted:latest": ...', rf.POD_SECURITY),
        (403, 'pods "x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1', rf.QUOTA),
        (400, 'admission webhook "deny.example.com" denied the request: no', rf.WEBHOOK),
        (422, 'Pod "x" is invalid: spec.containers[0].image: Required value', rf.INVALID),
        (None, "1 validation error for CoreV1Api.create_namespaced_pod", rf.INVALID),
        (403, "forbidden: User cannot create pods", rf.FORBIDDEN),
    ],
)
def test_refusals_are_classified_by_the_apiservers_answer(code: int | None, message: str, reason: str) -> None:
    assert rf.classify(code, message) == reason


def test_only_verdicts_on_the_object_count_as_refusals() -> None:
    assert rf.is_refusal(403) and rf.is_refusal(422) and rf.is_refusal(None)
    assert not rf.is_refusal(409) and not rf.is_refusal(429) and not rf.is_refusal(500)


def test_backoff_doubles_from_half_a_second_to_the_cap_and_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(backoff_module.time, "monotonic", lambda: clock[0])
    b = Backoff()
    delays = [b.failed("k", "boom", 1).delay for _ in range(12)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] == 300.0 and max(delays) == 300.0
    assert b.wait_left("k", 1) == 300.0
    clock[0] += 100
    assert b.wait_left("k", 1) == 200.0
    assert b.wait_left("k", 2) == 0.0  # the spec changed: the user's fix is tried at once
    assert b.succeeded("k") and not b.succeeded("k")
    assert b.failed("k", "boom", 1).delay == 0.5
