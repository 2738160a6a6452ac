"""Every number the CRD accepts reconciles: the largest deadlines and TTLs, and dates at the edge of
what a datetime can hold, give a plan (never an exception), with requeues kept to sane delays."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from phalanx.api.models import MAX_SECONDS, TrainingJobSpec, TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core.model import MAX_REQUEUE_SECONDS
from phalanx.core.observe import parse_time
from phalanx.core.reconcile import reconcile
from tests.unit.specs import T0, job, pod, spec

LATEST = "9999-12-31T23:59:59Z"  # the last second a datetime can hold
EARLIEST = "0001-01-01T00:00:00Z"


@pytest.mark.parametrize("started", [LATEST, EARLIEST, "2026-01-01T00:00:00Z"])
def test_largest_active_deadline_reconciles_with_any_start_time(started: str) -> None:
    s = TrainingJobStatus(attempt=1, start_time=started)
    j = job(spec(runPolicy={"activeDeadlineSeconds": MAX_SECONDS}), s)
    plan = reconcile(j, [pod(0), pod(1)], True, T0)
    if started == EARLIEST:  # two thousand years exceed any deadline
        assert cond.is_true(plan.status, cond.FAILED)
        assert cond.get(plan.status, cond.FAILED).reason == "DeadlineExceeded"  # type: ignore[union-attr]
    else:
        assert plan.status.state == "Running"
        assert plan.requeue_after is not None and plan.requeue_after <= MAX_REQUEUE_SECONDS


@pytest.mark.parametrize("ended", [LATEST, EARLIEST])
def test_largest_ttl_after_finished_reconciles(ended: str) -> None:
    s = TrainingJobStatus(attempt=1, completion_time=ended)
    s.conditions = []
    cond.set_condition(s, cond.SUCCEEDED, True, "AllReplicasSucceeded", "", 1, T0)
    j = job(spec(runPolicy={"ttlSecondsAfterFinished": MAX_SECONDS}), s)
    plan = reconcile(j, [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")], True, T0)
    if ended == EARLIEST:
        assert plan.delete_job
    else:
        assert not plan.delete_job and plan.requeue_after == MAX_REQUEUE_SECONDS


def test_largest_startup_deadline_reconciles() -> None:
    s = TrainingJobStatus(attempt=1)
    j = job(spec(runPolicy={"startupDeadlineSeconds": MAX_SECONDS}), s)
    admitted = reconcile(j, [pod(0, phase="Pending"), pod(1, phase="Pending")], True, T0)
    assert cond.is_true(admitted.status, cond.ADMITTED)
    again = reconcile(job(j.spec, admitted.status), [pod(0, phase="Pending"), pod(1, phase="Pending")], True, T0)
    assert not cond.is_true(again.status, cond.FAILED) and again.requeue_after == MAX_REQUEUE_SECONDS


@pytest.mark.parametrize("field", ["activeDeadlineSeconds", "startupDeadlineSeconds", "ttlSecondsAfterFinished"])
def test_seconds_beyond_int32_are_refused_by_the_model(field: str) -> None:
    body = spec().model_dump(by_alias=True, exclude_none=True)
    body["runPolicy"][field] = MAX_SECONDS + 1
    with pytest.raises(ValidationError, match=field):
        TrainingJobSpec.model_validate(body)


def test_unreadable_time_in_status_is_treated_as_absent() -> None:
    assert parse_time("yesterday") is None
    assert parse_time("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)  # no zone: UTC
    s = TrainingJobStatus(attempt=1, start_time="yesterday")
    plan = reconcile(job(spec(runPolicy={"activeDeadlineSeconds": 60}), s), [pod(0), pod(1)], True, T0)
    assert plan.status.state == "Running"


@pytest.mark.parametrize("queue", ["${HOME}", "-1", " ", "../../etc/passwd", "Team-A", "q" * 64])
def test_a_queue_name_that_cannot_be_a_label_value_is_refused_by_the_model(queue: str) -> None:
    # Kueue reads the queue from the Workload's label: a name no label can hold would fail every reconcile.
    body = spec().model_dump(by_alias=True, exclude_none=True)
    body.setdefault("scheduling", {})["queueName"] = queue
    with pytest.raises(ValidationError, match=r"queueName|queue_name"):
        TrainingJobSpec.model_validate(body)
    body["scheduling"]["queueName"] = "team-a.gpu"
    assert TrainingJobSpec.model_validate(body).scheduling.queue_name == "team-a.gpu"
