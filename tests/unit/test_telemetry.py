"""The efficiency, goodput and status-summary arithmetic of phalanx.core.telemetry (pure, no cluster)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from phalanx.api.models import (
    CheckpointStatus,
    Condition,
    SizeThroughput,
    ThroughputStatus,
    TrainingJobSpec,
    TrainingJobStatus,
)
from phalanx.core import telemetry as tm
from phalanx.core.model import JobView, PodView
from phalanx.core.observe import format_time
from phalanx.core.reconcile import reconcile
from phalanx.core.telemetry import Change, JobTelemetry, PodSample

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def spec(replicas: int = 1, **metrics: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "framework": "pytorch",
            "replicas": replicas,
            "metrics": metrics,
            "scheduling": {"gang": False},
            "template": {"spec": {"containers": [{"name": "trainer", "image": "t"}]}},
        }
    )


def sample(at: float, samples: float, *, attempt: int = 1, steps: float | None = None, **kw: Any) -> PodSample:
    return PodSample(
        at=at,
        attempt=attempt,
        samples=samples,
        steps=samples / 10 if steps is None else steps,
        step_seconds_sum=kw.pop("step_seconds_sum", 0.0),
        step_seconds_count=kw.pop("step_seconds_count", 0.0),
        **kw,
    )


def telemetry(rate: float | None, replicas: int = 1, attempt: int = 1, seconds: float = 100, **kw: Any) -> JobTelemetry:
    return JobTelemetry(
        attempt=attempt,
        replicas=replicas,
        pods_reporting=replicas,
        observed_at=CREATED + timedelta(seconds=seconds),
        samples_per_second=rate,
        **kw,
    )


def status(attempt: int = 1, throughput: ThroughputStatus | None = None, **kw: Any) -> TrainingJobStatus:
    return TrainingJobStatus(attempt=attempt, throughput=throughput, **kw)


# --- rates from windows -------------------------------------------------------------------------------


def test_pod_rate_is_counter_growth_over_the_window() -> None:
    assert tm.pod_rate([sample(0, 100), sample(10, 600), sample(20, 1100)]) == pytest.approx(50.0)


def test_pod_rate_needs_two_samples() -> None:
    assert tm.pod_rate([]) is None
    assert tm.pod_rate([sample(0, 100)]) is None


def test_pod_rate_starts_when_the_first_sample_is_counted() -> None:
    # 30 s of import and rendezvous at 0 samples, then 50/s: the start-up is not throughput.
    window = [sample(0, 0), sample(10, 0), sample(20, 0), sample(30, 0), sample(40, 500), sample(50, 1000)]
    assert tm.pod_rate(window) == pytest.approx(50.0)
    assert tm.pod_rate(window[:4]) is None  # nothing counted yet: no rate, not a rate of 0
    assert tm.pod_rate([sample(0, 100), sample(10, 100)]) == 0.0  # counted before and then stalled: 0


def test_restart_in_the_middle_of_a_window_counts_only_the_new_run() -> None:
    # attempt 1 ran at 50/s, then the gang restarted: the counter starts over in attempt 2 at 20/s.
    window = [sample(0, 0), sample(10, 500), sample(20, 40, attempt=2), sample(30, 240, attempt=2)]
    assert tm.current_run(window) == window[2:]
    assert tm.pod_rate(window) == pytest.approx(20.0)


def test_counter_reset_within_one_attempt_also_starts_a_new_run() -> None:
    # The trainer process restarted in place (same attempt): never a negative rate.
    window = [sample(0, 0), sample(10, 500), sample(20, 100), sample(30, 400)]
    assert tm.pod_rate(window) == pytest.approx(30.0)


def test_a_restart_right_at_the_end_of_the_window_has_no_rate_yet() -> None:
    window = [sample(0, 0), sample(10, 500), sample(20, 40, attempt=2)]
    assert tm.pod_rate(window) is None
    t = tm.job_telemetry({"p0": window}, attempt=2, replicas=1, observed_at=CREATED)
    assert t is not None and t.samples_per_second is None and t.pods_reporting == 1


def test_job_throughput_sums_pods_and_counts_missing_pods_as_the_mean() -> None:
    w = {"p0": [sample(0, 0), sample(10, 1000)], "p1": [sample(0, 0), sample(10, 800)]}
    t = tm.job_telemetry(w, attempt=1, replicas=2, observed_at=CREATED)
    assert t is not None and t.samples_per_second == pytest.approx(180.0) and t.replicas == 2
    # Of a 4-pod gang only two answered: their mean stands for the others (lockstep ranks).
    t4 = tm.job_telemetry(w, attempt=1, replicas=4, observed_at=CREATED)
    assert t4 is not None and t4.samples_per_second == pytest.approx(360.0) and t4.pods_reporting == 2


def test_trainer_world_size_wins_over_the_spec_replicas() -> None:
    # spec says 4 (a scale is under way) but this attempt's trainers run 2 pods of 2 processes each.
    w = {"p0": [sample(0, 0, world_size=4, procs_per_pod=2), sample(10, 1000, world_size=4, procs_per_pod=2)]}
    t = tm.job_telemetry(w, attempt=1, replicas=4, observed_at=CREATED)
    assert t is not None and t.replicas == 2 and t.samples_per_second == pytest.approx(200.0)


def test_samples_of_another_attempt_are_ignored() -> None:
    w = {"p0": [sample(0, 0), sample(10, 1000)]}
    assert tm.job_telemetry(w, attempt=2, replicas=1, observed_at=CREATED) is None


def test_step_checkpoint_and_step_time_come_from_the_newest_samples() -> None:
    w = {
        "p0": [
            sample(0, 0, steps=0),
            sample(10, 100, steps=10, resumed_from_step=40, step_seconds_sum=5.0, step_seconds_count=10,
                   checkpoint_step=45, checkpoint_time=1_767_225_700.0),
        ],
        "p1": [sample(10, 100, steps=10, resumed_from_step=40, step_seconds_sum=6.0, step_seconds_count=10)],
    }  # fmt: skip
    t = tm.job_telemetry(w, attempt=1, replicas=2, observed_at=CREATED)
    assert t is not None
    assert t.step == 50  # resumed from 40, 10 steps since
    assert t.step_seconds == pytest.approx(0.55)
    assert (t.checkpoint_step, t.checkpoint_time) == (45, 1_767_225_700.0)


# --- efficiency -----------------------------------------------------------------------------------


def test_no_baseline_yet_means_no_efficiency() -> None:
    s = tm.summarize(spec(), status(), CREATED, telemetry(None))
    assert s.throughput is not None
    assert s.throughput.scaling_efficiency is None and s.throughput.baseline_samples_per_second is None
    assert s.throughput.samples_per_second is None


def test_one_replica_measures_its_own_baseline_and_is_100_percent() -> None:
    s = tm.summarize(spec(), status(), CREATED, telemetry(1234.5))
    assert s.throughput is not None
    assert s.throughput.samples_per_second == 1230.0  # 3 significant digits
    assert s.throughput.baseline_samples_per_second == 1230.0 and s.throughput.baseline_replicas == 1
    assert s.throughput.scaling_efficiency == 1.0


def test_one_replica_against_a_declared_baseline() -> None:
    s = tm.summarize(spec(baselineSamplesPerSecond=1000.0), status(), CREATED, telemetry(900.0))
    assert s.throughput is not None
    assert s.throughput.scaling_efficiency == 0.9 and s.throughput.baseline_replicas == 1


def test_scaling_up_keeps_the_baseline_of_the_smallest_size() -> None:
    at_one = ThroughputStatus(samples_per_second=100.0, baseline_samples_per_second=100.0, baseline_replicas=1)
    s = tm.summarize(spec(replicas=4), status(attempt=2, throughput=at_one), CREATED, telemetry(340.0, 4, attempt=2))
    assert s.throughput is not None
    assert s.throughput.baseline_samples_per_second == 100.0 and s.throughput.baseline_replicas == 1
    assert s.throughput.scaling_efficiency == pytest.approx(0.85)  # 340 / (4 * 100)


def test_a_job_that_started_at_two_replicas_is_measured_against_itself_at_two() -> None:
    s = tm.summarize(spec(replicas=2), status(), CREATED, telemetry(180.0, 2))
    assert s.throughput is not None
    assert s.throughput.baseline_samples_per_second == 90.0 and s.throughput.baseline_replicas == 2
    assert s.throughput.scaling_efficiency == 1.0
    later = tm.summarize(spec(replicas=8), status(2, s.throughput), CREATED, telemetry(540.0, 8, attempt=2))
    assert later.throughput is not None and later.throughput.scaling_efficiency == pytest.approx(0.75)


def test_each_size_keeps_its_latest_reading_smallest_first() -> None:
    s = tm.summarize(spec(replicas=2), status(), CREATED, telemetry(180.0, 2))
    assert s.throughput is not None
    assert s.throughput.sizes == [SizeThroughput(replicas=2, world_size=2, samples_per_second=180.0)]
    s = tm.summarize(spec(replicas=4), status(2, s.throughput), CREATED, telemetry(340.0, 4, attempt=2))
    assert s.throughput is not None
    s = tm.summarize(spec(replicas=2), status(3, s.throughput), CREATED, telemetry(170.0, 2, attempt=3))
    assert s.throughput is not None
    assert [(p.replicas, p.samples_per_second) for p in s.throughput.sizes] == [(2, 170.0), (4, 340.0)]


def test_a_new_size_is_an_event_and_its_reading_moves_like_the_rate() -> None:
    one = [SizeThroughput(replicas=2, world_size=2, samples_per_second=180.0)]
    base = ThroughputStatus(samples_per_second=180.0, scaling_efficiency=1.0, baseline_samples_per_second=90.0,
                            baseline_replicas=2, sizes=one)  # fmt: skip
    two = [*one, SizeThroughput(replicas=4, world_size=4, samples_per_second=180.0)]
    assert tm.change(tm.Summary(base, None), tm.Summary(base.model_copy(update={"sizes": two}), None)) is Change.EVENT
    nudged = [SizeThroughput(replicas=2, world_size=2, samples_per_second=181.0)]
    moved = base.model_copy(update={"samples_per_second": 181.0, "sizes": nudged})
    assert tm.change(tm.Summary(base, None), tm.Summary(moved, None)) is Change.NONE  # < 2 %: no write


def test_sizes_are_bounded_and_the_current_one_is_kept() -> None:
    many = [SizeThroughput(replicas=n, world_size=n, samples_per_second=10.0 * n) for n in range(1, 17)]
    kept = tm.record_size(many, 40, 40, 400.0)
    assert len(kept) == 16 and kept[-1].replicas == 40 and kept[0].replicas == 1
    assert 16 not in {p.replicas for p in kept}  # the largest other size gave way


def test_world_size_of_a_size_counts_the_processes_per_pod() -> None:
    multi = TrainingJobSpec.model_validate(
        {"framework": "pytorch", "replicas": 2, "resources": {"gpus": 4},
         "template": {"spec": {"containers": [{"name": "trainer", "image": "t"}]}}}
    )  # fmt: skip
    s = tm.summarize(multi, status(), CREATED, telemetry(800.0, 2))
    assert s.throughput is not None and s.throughput.sizes[0].world_size == 8


def test_scaling_below_the_baseline_size_takes_a_new_baseline() -> None:
    at_two = ThroughputStatus(samples_per_second=180.0, baseline_samples_per_second=90.0, baseline_replicas=2)
    s = tm.summarize(spec(), status(attempt=3, throughput=at_two), CREATED, telemetry(95.0, 1, attempt=3))
    assert s.throughput is not None
    assert s.throughput.baseline_samples_per_second == 95.0 and s.throughput.baseline_replicas == 1


def test_a_declared_baseline_wins_over_history() -> None:
    measured = ThroughputStatus(baseline_samples_per_second=90.0, baseline_replicas=1)
    s = tm.summarize(spec(2, baselineSamplesPerSecond=100.0), status(throughput=measured), CREATED, telemetry(150.0, 2))
    assert s.throughput is not None
    assert s.throughput.baseline_samples_per_second == 100.0 and s.throughput.scaling_efficiency == 0.75


def test_efficiency_formula() -> None:
    assert tm.efficiency(680.0, 8, 100.0) == pytest.approx(0.85)
    assert tm.significant(0.012345) == 0.0123 and tm.significant(98765.0) == 98800.0 and tm.significant(0.0) == 0.0


# --- goodput --------------------------------------------------------------------------------------


def test_goodput_counts_pending_time_as_lost() -> None:
    # 60 steps of 1 s kept after 100 s of wall time (40 s queued and starting).
    s = tm.summarize(spec(), status(), CREATED, telemetry(10.0, seconds=100, step=60, step_seconds=1.0))
    assert s.throughput is not None and s.throughput.goodput == 0.6


def test_goodput_after_a_restart_in_the_middle_loses_the_work_since_the_checkpoint() -> None:
    # Attempt 1 reached step 150 at t=200 (1 s/step), checkpointed at 100, then failed. Attempt 2
    # resumed from 100 and at t=230 is at step 110: the 50 steps after the checkpoint were lost.
    before = tm.summarize(spec(), status(), CREATED, telemetry(10.0, seconds=200, step=150, step_seconds=1.0))
    assert before.throughput is not None and before.throughput.goodput == 0.75
    after = tm.summarize(
        spec(),
        status(2, before.throughput),
        CREATED,
        telemetry(10.0, attempt=2, seconds=230, step=110, step_seconds=1.0),
    )
    assert after.throughput is not None and after.throughput.goodput == pytest.approx(110 / 230, abs=0.005)


def test_goodput_is_kept_until_the_new_attempt_reports_steps() -> None:
    old = ThroughputStatus(goodput=0.7)
    s = tm.summarize(spec(), status(2, old), CREATED, telemetry(None, attempt=2, seconds=300))
    assert s.throughput is not None and s.throughput.goodput == 0.7


def test_goodput_is_bounded() -> None:
    assert tm.goodput(1000, 1.0, 10.0) == 1.0
    assert tm.goodput(10, 1.0, 0.0) == 0.0
    assert tm.goodput(0, 1.0, 10.0) == 0.0


# --- checkpoint -----------------------------------------------------------------------------------


def test_checkpoint_moves_forward_only() -> None:
    ts = CREATED.timestamp() + 50
    s = tm.summarize(spec(), status(), CREATED, telemetry(10.0, checkpoint_step=200, checkpoint_time=ts))
    assert s.last_checkpoint == CheckpointStatus(step=200, time=format_time(CREATED + timedelta(seconds=50)))
    newer = CheckpointStatus(step=300, time=format_time(CREATED + timedelta(seconds=80)))
    kept = tm.summarize(
        spec(), status(last_checkpoint=newer), CREATED, telemetry(10.0, checkpoint_step=200, checkpoint_time=ts)
    )
    assert kept.last_checkpoint == newer


def test_a_resumed_attempt_without_its_own_checkpoint_keeps_the_known_one() -> None:
    known = CheckpointStatus(step=300, time=format_time(CREATED))
    s = tm.summarize(spec(), status(2, last_checkpoint=known), CREATED, telemetry(10.0, attempt=2))
    assert s.last_checkpoint == known


# --- materiality: no status write per scrape --------------------------------------------------------


def test_jitter_is_no_change_and_drift_or_events_are() -> None:
    base = ThroughputStatus(samples_per_second=1000.0, scaling_efficiency=0.9, baseline_samples_per_second=500.0,
                            baseline_replicas=1, goodput=0.5)  # fmt: skip

    def summary(**kw: Any) -> tm.Summary:
        return tm.Summary(throughput=base.model_copy(update=kw), last_checkpoint=None)

    old = summary()
    assert tm.change(old, summary(samples_per_second=1010.0, scaling_efficiency=0.905)) is Change.NONE
    assert tm.change(old, summary(samples_per_second=1100.0)) is Change.DRIFT
    assert tm.change(old, summary(scaling_efficiency=0.88)) is Change.DRIFT
    assert tm.change(old, summary(goodput=0.52)) is Change.DRIFT
    assert tm.change(old, summary(samples_per_second=None)) is Change.EVENT
    assert tm.change(old, summary(baseline_replicas=2)) is Change.EVENT
    ckpt = tm.Summary(throughput=base, last_checkpoint=CheckpointStatus(step=1, time=format_time(CREATED)))
    assert tm.change(old, ckpt) is Change.EVENT


def test_apply_is_idempotent_and_ignores_jitter() -> None:
    st = status()
    assert tm.apply(st, spec(), CREATED, telemetry(1000.0)) is Change.EVENT
    first = st.model_dump()
    assert tm.apply(st, spec(), CREATED, telemetry(1000.0)) is Change.NONE
    assert tm.apply(st, spec(), CREATED, telemetry(1009.0)) is Change.NONE  # < 2 %: status untouched
    assert st.model_dump() == first


def test_telemetry_of_an_older_attempt_clears_the_rate_but_keeps_the_baseline() -> None:
    known = ThroughputStatus(samples_per_second=100.0, scaling_efficiency=1.0, baseline_samples_per_second=100.0,
                             baseline_replicas=1, goodput=0.8)  # fmt: skip
    s = tm.summarize(spec(), status(2, known), CREATED, telemetry(100.0, attempt=1))
    assert s.throughput is not None
    assert s.throughput.samples_per_second is None and s.throughput.scaling_efficiency is None
    assert s.throughput.baseline_samples_per_second == 100.0 and s.throughput.goodput == 0.8


# --- the reconcile seam -------------------------------------------------------------------------------


def running_job(throughput: ThroughputStatus | None = None) -> tuple[JobView, list[PodView]]:
    now = format_time(CREATED)
    conditions = [
        Condition(type="Admitted", status="True", reason="AdmittedExternally", last_transition_time=now),
        Condition(type="Running", status="True", reason="AllReplicasRunning", last_transition_time=now,
                  message="1 pods, world size 1, attempt 1", observed_generation=1),
    ]  # fmt: skip
    st = TrainingJobStatus(
        attempt=1, attempt_start_time=now, start_time=now, conditions=conditions, throughput=throughput
    )
    job = JobView(
        name="j", namespace="ns", uid="u", generation=1, created=CREATED, spec=spec(), spec_error=None, status=st
    )
    pods = [PodView(name="j-worker-0", index=0, attempt=1, phase="Running", ready=True, replicas=1, ip="10.0.0.1")]
    return job, pods


def test_reconcile_folds_telemetry_into_status_once() -> None:
    job, pods = running_job()
    now = CREATED + timedelta(seconds=120)
    plain = reconcile(job, pods, True, now)
    assert plain.status.throughput is None
    settled = replace(job, status=plain.status)
    t = telemetry(500.0, seconds=120, step=100, step_seconds=1.0)
    plan = reconcile(settled, pods, True, now, telemetry=t)
    assert plan.status_changed
    assert plan.status.throughput == ThroughputStatus(
        samples_per_second=500.0, scaling_efficiency=1.0, baseline_samples_per_second=500.0, baseline_replicas=1,
        goodput=0.83, sizes=[SizeThroughput(replicas=1, world_size=1, samples_per_second=500.0)],
    )  # fmt: skip
    # The same or slightly different numbers next time: nothing to write.
    again = replace(job, status=plan.status)
    assert not reconcile(again, pods, True, now, telemetry=t).status_changed
    assert not reconcile(
        again, pods, True, now, telemetry=telemetry(505.0, seconds=121, step=101, step_seconds=1.0)
    ).status_changed


def test_reconcile_ignores_telemetry_while_not_running() -> None:
    job, _ = running_job()
    starting = [PodView(name="j-worker-0", index=0, attempt=1, phase="Pending", replicas=1)]
    plan = reconcile(job, starting, True, CREATED + timedelta(seconds=5), telemetry=telemetry(500.0))
    assert plan.status.throughput is None
