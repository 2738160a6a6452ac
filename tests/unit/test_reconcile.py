"""The pure reconcile: each decision from what exists, with no API and no clock but the one passed in."""

from __future__ import annotations

from datetime import timedelta

from phalanx.api.models import TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core.model import Plan
from phalanx.core.reconcile import AdmissionNote, reconcile
from tests.unit.specs import T0, job, pod, refs, spec


def status_after(plan: Plan) -> TrainingJobStatus:
    return plan.status


def test_new_job_creates_service_and_gated_pods_first_attempt() -> None:
    plan = reconcile(job(spec(replicas=3)), [], service_exists=False, now=T0)
    kinds = [m["kind"] for m in plan.create]
    assert kinds == ["Service", "Pod", "Pod", "Pod"]
    assert [m["metadata"]["name"] for m in plan.create[1:]] == ["j-a1-worker-0", "j-a1-worker-1", "j-a1-worker-2"]
    s = plan.status
    assert s.attempt == 1 and s.state == "Queued" and s.world_size == 3 and s.ready_summary == "0/3"
    admitted = cond.get(s, cond.ADMITTED)
    assert admitted is not None and admitted.status == "False" and admitted.reason == "WaitingForAdmission"
    assert plan.status_changed


def test_only_missing_ranks_are_created_never_duplicates() -> None:
    s = TrainingJobStatus(attempt=1)
    plan = reconcile(job(spec(replicas=4), s), [pod(0, replicas=4), pod(2, replicas=4)], True, T0)
    assert [m["metadata"]["name"] for m in plan.create] == ["j-a1-worker-1", "j-a1-worker-3"]


def test_admission_note_is_shown_while_gated() -> None:
    s = TrainingJobStatus(attempt=1)
    pods = [pod(i, phase="Pending", gated=True) for i in range(2)]
    note = AdmissionNote("InsufficientGPU", "needs 2 pods of 8 x H100 = 16; 8 free across 1 node(s)")
    plan = reconcile(job(spec(), s), pods, True, T0, note)
    c = cond.get(plan.status, cond.ADMITTED)
    assert c is not None and (c.reason, c.message) == (note.reason, note.message)
    assert plan.status.state == "Queued"


def test_all_running_sets_running_and_start_time() -> None:
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [pod(0), pod(1)], True, T0)
    s = plan.status
    assert s.state == "Running" and s.start_time == "2026-01-01T00:00:00Z" and s.replicas.ready == 2
    assert cond.is_true(s, cond.ADMITTED) and cond.is_true(s, cond.RUNNING)
    assert [e.reason for e in plan.events] == ["GangAdmitted", "AllReplicasRunning"]


def test_unchanged_world_writes_no_status() -> None:
    first = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [pod(0), pod(1)], True, T0)
    again = reconcile(job(spec(), first.status), [pod(0), pod(1)], True, T0 + timedelta(seconds=30))
    assert not again.status_changed and not again.events and not again.create and not again.delete_pods


def test_pods_coming_up_one_by_one_are_progress_only_until_the_gang_runs() -> None:
    pods = [pod(i, replicas=4, phase="Pending") for i in range(4)]
    first = reconcile(job(spec(replicas=4), TrainingJobStatus(attempt=1)), pods, True, T0)
    assert first.status_changed and not first.progress_only  # Admitted and Running conditions appear
    pods[0] = pod(0, replicas=4)
    one_up = reconcile(job(spec(replicas=4), first.status), pods, True, T0 + timedelta(seconds=1))
    assert one_up.status_changed and one_up.progress_only and not one_up.events
    assert one_up.status.replicas.ready == 1
    all_up = [pod(i, replicas=4) for i in range(4)]
    running = reconcile(job(spec(replicas=4), one_up.status), all_up, True, T0 + timedelta(seconds=2))
    assert running.status_changed and not running.progress_only  # Running turned True: written at once


def test_retryable_exit_restarts_whole_gang_as_new_attempt() -> None:
    pods = [pod(0), pod(1, phase="Failed", exit_code=137, reason="OOMKilled")]
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), pods, True, T0)
    s = plan.status
    assert s.attempt == 2 and s.restarts == 1 and s.state == "Restarting"
    assert sorted(plan.delete_pods) == refs(0, 1)
    assert not plan.create  # the barrier: no rank of attempt 2 while attempt 1 lives
    restarting = cond.get(s, cond.RESTARTING)
    assert restarting is not None and "j-a1-worker-1 exited with code 137 (OOMKilled)" in restarting.message


def test_old_attempt_pods_block_the_new_gang_until_gone() -> None:
    old = [pod(0, attempt=1, terminating=True), pod(1, attempt=1, phase="Failed", exit_code=137)]
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=2, restarts=1)), old, True, T0)
    assert plan.create == [] and plan.delete_pods == refs(1)  # the terminating one is not deleted twice
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=2, restarts=1)), [], True, T0)
    assert {m["metadata"]["labels"]["phalanx.dev/attempt"] for m in plan.create if m["kind"] == "Pod"} == {"2"}


def test_permanent_exit_fails_at_once_and_cleans_running_pods() -> None:
    pods = [pod(0, phase="Failed", exit_code=1, reason="Error"), pod(1)]
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), pods, True, T0)
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "PodFailed" and "j-a1-worker-0 exited with code 1" in failed.message
    assert plan.status.restarts == 0 and plan.delete_pods == refs(1)  # cleanPodPolicy Running
    assert plan.status.completion_time == "2026-01-01T00:00:00Z"


def test_restart_on_always_and_never() -> None:
    failed = [pod(0, phase="Failed", exit_code=1), pod(1)]
    always = reconcile(job(spec(runPolicy={"restartOn": "always"}), TrainingJobStatus(attempt=1)), failed, True, T0)
    assert always.status.attempt == 2
    oom = [pod(0, phase="Failed", exit_code=137), pod(1)]
    never = reconcile(job(spec(runPolicy={"restartOn": "never"}), TrainingJobStatus(attempt=1)), oom, True, T0)
    assert cond.is_true(never.status, cond.FAILED)


def test_eviction_and_deletion_by_others_are_retryable() -> None:
    for bad in (pod(1, phase="Failed", reason="Evicted"), pod(1, disrupted=True), pod(1, terminating=True)):
        plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [pod(0), bad], True, T0)
        assert plan.status.attempt == 2, bad


def test_backoff_limit_exhausted_fails() -> None:
    pods = [pod(0, attempt=4, phase="Failed", exit_code=143), pod(1, attempt=4)]
    plan = reconcile(job(spec(runPolicy={"backoffLimit": 3}), TrainingJobStatus(attempt=4, restarts=3)), pods, True, T0)
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "BackoffLimitExceeded"


def test_all_succeeded_succeeds_and_ttl_deletes_later() -> None:
    s = spec(runPolicy={"ttlSecondsAfterFinished": 60})
    plan = reconcile(
        job(s, TrainingJobStatus(attempt=1)), [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")], True, T0
    )
    assert plan.status.state == "Succeeded" and plan.requeue_after == 60 and not plan.delete_job
    later = reconcile(job(s, plan.status), [], True, T0 + timedelta(seconds=61))
    assert later.delete_job


def test_suspend_deletes_pods_and_resume_is_a_new_attempt() -> None:
    plan = reconcile(job(spec(runPolicy={"suspend": True}), TrainingJobStatus(attempt=1)), [pod(0), pod(1)], True, T0)
    assert plan.status.state == "Suspended" and sorted(plan.delete_pods) == refs(0, 1)
    resumed = reconcile(job(spec(), plan.status), [], True, T0)
    assert resumed.status.attempt == 2 and resumed.status.restarts == 0
    assert "Resumed" in [e.reason for e in resumed.events]


def test_replicas_change_restarts_at_new_world_size_without_counting_a_failure() -> None:
    plan = reconcile(job(spec(replicas=4), TrainingJobStatus(attempt=1)), [pod(0), pod(1)], True, T0)
    s = plan.status
    assert s.attempt == 2 and s.restarts == 0 and cond.get(s, cond.RESTARTING).reason == "Rescaling"  # type: ignore[union-attr]
    assert sorted(plan.delete_pods) == refs(0, 1)


def test_active_deadline_fails_the_job() -> None:
    s = TrainingJobStatus(attempt=1, start_time="2026-01-01T00:00:00Z")
    plan = reconcile(
        job(spec(runPolicy={"activeDeadlineSeconds": 10}), s), [pod(0), pod(1)], True, T0 + timedelta(seconds=11)
    )
    assert cond.get(plan.status, cond.FAILED).reason == "DeadlineExceeded"  # type: ignore[union-attr]


def test_startup_deadline_fails_with_the_pod_reason() -> None:
    s = spec(runPolicy={"startupDeadlineSeconds": 60})
    pods = [pod(0), pod(1, phase="Pending", waiting_reason="ImagePullBackOff", message="pull access denied")]
    first = reconcile(job(s, TrainingJobStatus(attempt=1)), pods, True, T0)
    running = cond.get(first.status, cond.RUNNING)
    assert running is not None and running.reason == "ImagePullBackOff" and "j-a1-worker-1" in running.message
    assert first.requeue_after == 60
    later = reconcile(job(s, first.status), pods, True, T0 + timedelta(seconds=61))
    failed = cond.get(later.status, cond.FAILED)
    assert failed is not None and failed.reason == "ImagePullBackOff" and "startupDeadlineSeconds=60" in failed.message


def test_unparseable_or_invalid_spec_is_invalid_spec() -> None:
    plan = reconcile(job(spec(replicas=2), name="x" * 60), [], False, T0)
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "InvalidSpec" and "metadata.name" in failed.message
    assert not plan.create
    tpu = spec(
        "tensorflow",
        replicas=3,
        strategy="tpu",
        resources={"tpu": {"accelerator": "tpu-v5-lite-podslice", "topology": "2x4", "chipsPerHost": 4}},
    )
    msg = cond.get(reconcile(job(tpu), [], False, T0).status, cond.FAILED).message  # type: ignore[union-attr]
    assert "replicas must be 2, not 3" in msg


def test_deleting_job_is_left_to_garbage_collection() -> None:
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1), deleting=True), [pod(0, terminating=True)], True, T0)
    assert not plan.status_changed and not plan.create and not plan.delete_pods


def test_peer_crash_after_a_kill_still_restarts_the_gang() -> None:
    # worker-1 was SIGKILLed; worker-0 then exited 1 on the broken collective, in the same second or later.
    for crash_time in ("2026-01-01T00:00:05Z", "2026-01-01T00:00:07Z"):
        pods = [
            pod(0, phase="Failed", exit_code=1, finished_at=crash_time),
            pod(1, phase="Failed", exit_code=137, finished_at="2026-01-01T00:00:05Z"),
        ]
        plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), pods, True, T0)
        assert plan.status.attempt == 2 and not cond.is_true(plan.status, cond.FAILED), crash_time


def test_program_error_that_came_first_fails_the_job() -> None:
    pods = [
        pod(0, phase="Failed", exit_code=1, finished_at="2026-01-01T00:00:03Z"),
        pod(1, phase="Failed", exit_code=137, finished_at="2026-01-01T00:00:09Z"),
    ]
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), pods, True, T0)
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and "j-a1-worker-0 exited with code 1" in failed.message


def test_event_names_the_step_a_restarted_gang_resumed_from_once() -> None:
    from phalanx.core.telemetry import JobTelemetry

    running = reconcile(
        job(spec(), TrainingJobStatus(attempt=2, restarts=1)), [pod(0, attempt=2), pod(1, attempt=2)], True, T0
    )
    t = JobTelemetry(attempt=2, replicas=2, pods_reporting=2, observed_at=T0, resumed_from_step=150)
    plan = reconcile(job(spec(), running.status), [pod(0, attempt=2), pod(1, attempt=2)], True, T0, telemetry=t)
    assert plan.status.resumed_from_step == 150
    assert [e.message for e in plan.events if e.reason == "ResumedFromCheckpoint"] == [
        "attempt 2 resumed from checkpoint step 150"
    ]
    again = reconcile(job(spec(), plan.status), [pod(0, attempt=2), pod(1, attempt=2)], True, T0, telemetry=t)
    assert not any(e.reason == "ResumedFromCheckpoint" for e in again.events)
    stale = JobTelemetry(attempt=1, replicas=2, pods_reporting=2, observed_at=T0, resumed_from_step=50)
    fresh = reconcile(job(spec(), running.status), [pod(0, attempt=2), pod(1, attempt=2)], True, T0, telemetry=stale)
    assert fresh.status.resumed_from_step is None  # another attempt's numbers never count


def test_a_program_error_waits_a_moment_for_the_rank_whose_loss_caused_it() -> None:
    """The peer's exit 1 on the broken collective can be reported before the SIGKILLed rank's 137."""
    crashed = pod(1, phase="Failed", exit_code=1, reason="Error", finished_at="2026-01-01T00:00:00Z")
    early = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [pod(0), crashed], True, T0 + timedelta(seconds=1))
    assert cond.get(early.status, cond.FAILED) is None and early.delete_pods == []
    assert early.requeue_after is not None and early.requeue_after <= 2
    killed = pod(0, phase="Failed", exit_code=137, reason="Error", finished_at="2026-01-01T00:00:00Z")
    then = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [killed, crashed], True, T0 + timedelta(seconds=1))
    assert then.status.attempt == 2 and cond.get(then.status, cond.FAILED) is None
    # Nobody else reports: after the moment, the program error fails the job.
    late = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [pod(0), crashed], True, T0 + timedelta(seconds=4))
    failed = cond.get(late.status, cond.FAILED)
    assert failed is not None and failed.reason == "PodFailed"


def test_startup_deadline_posts_its_events_once() -> None:
    s = spec(runPolicy={"startupDeadlineSeconds": 60})
    pods = [pod(0), pod(1, phase="Pending", waiting_reason="ImagePullBackOff", message="pull access denied")]
    first = reconcile(job(s, TrainingJobStatus(attempt=1)), pods, True, T0)
    later = reconcile(job(s, first.status), pods, True, T0 + timedelta(seconds=61))
    # The Failed transition's Warning, once (it was posted twice: fail() ended the step, done() ran again).
    assert [(e.type, e.reason) for e in later.events] == [("Warning", "ImagePullBackOff")], later.events
