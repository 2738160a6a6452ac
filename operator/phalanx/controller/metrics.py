"""The operator's own Prometheus metrics. One prefix, base units, `_total` counters, bounded labels
only (framework, result, reason, state): never a job or pod name. Per-job numbers (throughput,
scaling efficiency, goodput) are in each TrainingJob's status and in the trainers' own metrics;
docs/metrics.md lists every name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

from phalanx import __version__
from phalanx.api.frameworks import Framework
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
    "Whole-gang restarts (new attempts), by framework and reason (GangRestart after a failure, Hung "
    "when no rank advanced for progressDeadlineSeconds, Straggler, GPUUnhealthy, Rescaling after a "
    "replica change, Resumed after a suspension).",
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
    "Seconds a gang waited for the built-in gang admission (from Admitted=False to its gates lifted).",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 14400),
)
LEADER = Gauge(f"{PREFIX}_leader", "1 while this replica holds the leader Lease and acts; 0 while it stands by.")
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
STRAGGLER_JOBS = Gauge(
    f"{PREFIX}_straggler_jobs",
    "Running jobs whose Straggler condition is True: a rank much slower than the others (the job's "
    "condition names the pod and node; per-pod step times are in the trainers' metrics).",
)
STRAGGLERS_FOUND = Counter(
    f"{PREFIX}_stragglers_detected_total",
    "Times a job's Straggler condition turned True.",
)
WORK_QUEUE_DEPTH = Gauge(f"{PREFIX}_work_queue_depth", "Jobs waiting in the reconcile queue.")

# --- trainer telemetry (controller/scraper.py) ----------------------------------------------------------
TRAINER_SCRAPES = Counter(
    f"{PREFIX}_trainer_scrapes_total",
    "Reads of trainer pods' metrics endpoints, by result (ok, error, timeout, invalid: not a phalanx "
    "trainer of the pod's attempt).",
    ["result"],
)
TRAINER_SCRAPE_DURATION = Histogram(
    f"{PREFIX}_trainer_scrape_duration_seconds",
    "Duration of one read of one trainer pod's metrics endpoint, parsing included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TRAINER_SCRAPE_JOBS = Gauge(f"{PREFIX}_trainer_scrape_jobs", "Running jobs whose trainer pods are being scraped.")
TELEMETRY_UPDATES = Counter(
    f"{PREFIX}_telemetry_updates_total",
    "Jobs queued for a status update because their throughput summary changed, by kind (event: a "
    "value appeared or vanished, a checkpoint, a new baseline size; drift: a number moved beyond its "
    "threshold, rate-limited).",
    ["kind"],
)

FRAMEWORKS = tuple(Framework)
for _framework in FRAMEWORKS:
    # Known label values start at 0, so rate() and increase() see the first event.
    JOB_STARTS.labels(framework=_framework)
    TIME_TO_RUNNING.labels(framework=_framework)
    for _reason in ("GangRestart", "Hung", "Straggler", "GPUUnhealthy", "Rescaling", "Resumed"):
        GANG_RESTARTS.labels(framework=_framework, reason=_reason)
for _result in ("ok", "error", "timeout", "invalid"):
    TRAINER_SCRAPES.labels(result=_result)
for _kind in ("event", "drift"):
    TELEMETRY_UPDATES.labels(kind=_kind)


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
        # A resume after suspension sets no Restarting condition; an older one may linger as False.
        c = cond.get(new, cond.RESTARTING)
        reason = c.reason if c is not None and c.status == "True" else "Resumed"
        GANG_RESTARTS.labels(framework=framework, reason=reason).inc()
    if cond.is_true(new, cond.STRAGGLER) and not cond.is_true(old, cond.STRAGGLER):
        STRAGGLERS_FOUND.inc()
    before, after = cond.get(old, cond.ADMITTED), cond.get(new, cond.ADMITTED)
    if after and after.status == "True" and (before is None or before.status != "True") and before:
        t0, t1 = parse_time(before.last_transition_time), parse_time(after.last_transition_time)
        if t0 and t1:
            ADMISSION_WAIT.observe(max((t1 - t0).total_seconds(), 0))


def refresh_job_gauges(bodies: Iterable[Mapping[str, Any]], queue_depth: int) -> None:
    """Set the jobs-by-state gauge from the cached job bodies (plain dict reads: O(jobs), cheap)."""
    counts: dict[tuple[str, str], int] = {}
    stragglers = 0
    for body in bodies:
        status = body.get("status") or {}
        stragglers += any(
            c.get("type") == cond.STRAGGLER and c.get("status") == "True" for c in status.get("conditions") or []
        )
        state = status.get("state") or "Pending"
        framework = (body.get("spec") or {}).get("framework") or "unknown"
        counts[(state, framework)] = counts.get((state, framework), 0) + 1
    gone = {tuple(s.labels.values()) for m in JOBS.collect() for s in m.samples} - set(counts)
    for state, framework in gone:
        JOBS.labels(state=state, framework=framework).set(0)  # a state emptied reads 0, not stale
    for (state, framework), n in counts.items():
        JOBS.labels(state=state, framework=framework).set(n)
    STRAGGLER_JOBS.set(stragglers)
    WORK_QUEUE_DEPTH.set(queue_depth)


async def refresh_forever(
    bodies: Callable[[], Iterable[Mapping[str, Any]]], queue_depth: Callable[[], int], every: float = 5.0
) -> None:
    """Keep the state gauges current. (kopf's probe handler also sets them, but it runs only when a
    liveness endpoint is configured and probed.)"""
    while True:
        refresh_job_gauges(bodies(), queue_depth())
        await asyncio.sleep(every)
