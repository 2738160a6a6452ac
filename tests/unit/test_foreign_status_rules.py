"""Status written by someone else: corrected to what the pods show where they contradict it, never
obeyed by deleting running pods or restarting the gang (pure core; managedFields parsing)."""

from __future__ import annotations

from phalanx.api.models import TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core import names
from phalanx.core.observe import foreign_status, job_view
from phalanx.core.reconcile import reconcile
from tests.unit.specs import T0, job, pod, refs, spec


def running_status(attempt: int = 1) -> TrainingJobStatus:
    first = reconcile(job(spec(), TrainingJobStatus(attempt=attempt)), [pod(0, attempt), pod(1, attempt)], True, T0)
    return first.status


def with_condition(s: TrainingJobStatus, type_: str, reason: str) -> TrainingJobStatus:
    s = s.model_copy(deep=True)
    cond.set_condition(s, type_, True, reason, "set by hand", 1, T0)
    return s


def test_managed_fields_name_the_status_values_others_wrote() -> None:
    meta = {
        "managedFields": [
            {
                "manager": names.FIELD_MANAGER,
                "subresource": "status",
                "fieldsV1": {"f:status": {"f:attempt": {}, "f:conditions": {'k:{"type":"Running"}': {"f:status": {}}}}},
            },
            {
                "manager": "kubectl-patch",
                "subresource": "status",
                "fieldsV1": {
                    "f:status": {
                        "f:attempt": {},
                        "f:conditions": {'k:{"type":"Succeeded"}': {".": {}, "f:status": {}}, "bad key": {}},
                    }
                },
            },
            {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:status": {"f:restarts": {}}}},
        ]
    }
    assert foreign_status(meta) == {"attempt", "condition/Succeeded"}
    body = {"metadata": {"name": "j", **meta}, "spec": spec().model_dump(by_alias=True), "status": {}}
    assert job_view(body).foreign_status == {"attempt", "condition/Succeeded"}


def test_a_foreign_succeeded_on_a_running_gang_is_removed_and_the_pods_kept() -> None:
    s = with_condition(running_status(), cond.SUCCEEDED, "AllReplicasSucceeded")
    plan = reconcile(job(spec(), s, foreign_status=frozenset({"condition/Succeeded"})), [pod(0), pod(1)], True, T0)
    assert cond.get(plan.status, cond.SUCCEEDED) is None and plan.status.state == "Running"
    assert not plan.delete_pods and not plan.create and plan.status_changed
    corrected = [e for e in plan.events if e.reason == "StatusCorrected"]
    assert corrected and corrected[0].type == "Warning" and "Succeeded=True" in corrected[0].message


def test_a_foreign_failed_on_a_running_gang_is_removed_and_the_pods_kept() -> None:
    s = with_condition(running_status(), cond.FAILED, "BackoffLimitExceeded")
    s.completion_time = "2026-01-01T00:00:00Z"
    plan = reconcile(job(spec(), s, foreign_status=frozenset({"condition/Failed"})), [pod(0), pod(1)], True, T0)
    assert cond.get(plan.status, cond.FAILED) is None and plan.status.completion_time is None
    assert plan.status.state == "Running" and not plan.delete_pods
    assert any(e.reason == "StatusCorrected" and "Failed=True" in e.message for e in plan.events)


def test_a_foreign_attempt_no_pod_carries_becomes_the_pods_attempt_without_a_restart() -> None:
    s = running_status()
    s.attempt = 7
    plan = reconcile(job(spec(), s, foreign_status=frozenset({"attempt"})), [pod(0), pod(1)], True, T0)
    assert plan.status.attempt == 1 and plan.status.restarts == 0 and plan.status.state == "Running"
    assert not plan.delete_pods and not plan.create
    assert any(e.reason == "StatusCorrected" and "status.attempt 7" in e.message for e in plan.events)


def test_the_operators_own_attempt_ahead_of_the_pods_is_a_restart_in_progress() -> None:
    s = running_status()
    s.attempt = 2  # written by phalanx (not foreign): attempt 1's pods must go first
    plan = reconcile(job(spec(), s), [pod(0), pod(1)], True, T0)
    assert plan.status.attempt == 2 and sorted(plan.delete_pods) == refs(0, 1)


def test_a_terminal_condition_the_pods_agree_with_or_cannot_judge_is_kept() -> None:
    s = with_condition(running_status(), cond.SUCCEEDED, "AllReplicasSucceeded")
    done = [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")]
    foreign = frozenset({"condition/Succeeded", "condition/Failed", "attempt"})
    agreed = reconcile(job(spec(), s, foreign_status=foreign), done, True, T0)
    assert cond.is_true(agreed.status, cond.SUCCEEDED) and not any(e.reason == "StatusCorrected" for e in agreed.events)
    nothing = reconcile(job(spec(), s, foreign_status=foreign), [], True, T0)  # no pods: no restart either
    assert cond.is_true(nothing.status, cond.SUCCEEDED) and not nothing.create
    failing = with_condition(running_status(), cond.FAILED, "PodFailed")
    pods = [pod(0), pod(1, phase="Failed", exit_code=1)]
    kept = reconcile(job(spec(), failing, foreign_status=foreign), pods, True, T0)
    assert cond.is_true(kept.status, cond.FAILED)  # a failed pod: the pods do not contradict it
