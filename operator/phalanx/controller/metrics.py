"""The operator's own Prometheus metrics. One prefix, base units, bounded labels only
(framework, result, reason, state): never a job or pod name."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from phalanx import __version__
from phalanx.api.models import TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core.model import JobView
from phalanx.core.observe import parse_time

PREFIX = "phalanx_operator"

BUILD_INFO = Info(f"{PREFIX}_build", "Version of the running operator.")
BUILD_INFO.info({"version": __version__})
JOBS = Gauge(
    f"{PREFIX}_jobs",
    "TrainingJobs by state (Pending, Queued, Starting, Running, Restarting, "
    "Suspended, Succeeded, Failed) and framework (pytorch, tensorflow).",
    ["state", "framework"],
)
JOB_STARTS = Counter(
    f"{PREFIX}_job_starts_total", "Jobs whose first gang reached Running, by framework.", ["framework"]
)
JOB_ENDS = Counter(
    f"{PREFIX}_job_ends_total",
    "Jobs that finished, by framework and result (Succeeded, "
    "Failed) and reason (the Failed/Succeeded condition reason).",
    ["framework", "result", "reason"],
)
GANG_RESTARTS = Counter(
    f"{PREFIX}_gang_restarts_total",
    "Whole-gang restarts, by framework and reason (GangRestart, Rescaling).",
    ["framework", "reason"],
)
TIME_TO_RUNNING = Histogram(
    f"{PREFIX}_job_time_to_running_seconds",
    "Seconds from job creation to all pods of its first gang Running.",
    ["framework"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
ADMISSION_WAIT = Histogram(
    f"{PREFIX}_admission_wait_seconds",
    "Seconds a gang waited for admission (gates lifted).",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 14400),
)
ADMISSIONS = Counter(f"{PREFIX}_admissions_total", "Gangs admitted by the built-in gang admission.")
RECONCILE_DURATION = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Duration of one reconcile of one job.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RECONCILE_ERRORS = Counter(
    f"{PREFIX}_reconcile_errors_total", "Reconciles that failed and were retried, by exception class.", ["reason"]
)
PODS_CREATED = Counter(f"{PREFIX}_pods_created_total", "Pods created by the operator.")
WORK_QUEUE_DEPTH = Gauge(f"{PREFIX}_work_queue_depth", "Jobs waiting in the reconcile queue.")


def observe_transition(job: JobView, new: TrainingJobStatus) -> None:
    """Counters move on the transitions a status write records (each written once)."""
    old = job.status
    framework = job.spec.framework.value if job.spec else "unknown"
    if new.start_time and not old.start_time:
        JOB_STARTS.labels(framework=framework).inc()
        started = parse_time(new.start_time)
        if started:
            TIME_TO_RUNNING.labels(framework=framework).observe(max((started - job.created).total_seconds(), 0))
    for result in (cond.SUCCEEDED, cond.FAILED):
        c = cond.get(new, result)
        if c and c.status == "True" and not cond.is_true(old, result):
            JOB_ENDS.labels(framework=framework, result=result, reason=c.reason).inc()
    if new.attempt > max(old.attempt, 1):
        c = cond.get(new, cond.RESTARTING)
        GANG_RESTARTS.labels(framework=framework, reason=c.reason if c else "Resumed").inc()
    before, after = cond.get(old, cond.ADMITTED), cond.get(new, cond.ADMITTED)
    if after and after.status == "True" and (before is None or before.status != "True") and before:
        t0, t1 = parse_time(before.last_transition_time), parse_time(after.last_transition_time)
        if t0 and t1:
            ADMISSION_WAIT.observe(max((t1 - t0).total_seconds(), 0))
