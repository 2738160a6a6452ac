"""Throughput, scaling efficiency and goodput of a TrainingJob, from its trainers' metrics. Pure: no I/O.

Definitions (docs/metrics.md explains them with examples):

* X(N), the job's throughput in samples/s at N replicas (pods): the sum of the pods' rates, where a
  pod's rate is the growth of its `phalanx_trainer_samples_total` counter over the window (the
  same number Prometheus's `rate()` gives). Pods that could not be read count as the mean of those
  that could (DDP ranks run in lockstep, so they agree).
* Weak-scaling efficiency E(N) = X(N) / (N * X(1)). X(1), the throughput of one replica, is the
  declared `spec.metrics.baselineSamplesPerSecond`, else the job's own history: the throughput per
  replica measured at the smallest replica count the job ran at (for example before a
  `kubectl scale`). It lives in status.throughput.baselineSamplesPerSecond / baselineReplicas.
  At the baseline's own size the efficiency is 1.0 by construction.
* Goodput: the share of wall time since the job was created that produced training progress the
  job still has. Progress kept is the global step the trainers report (a restart resumes from the
  last checkpoint, so steps done after it are lost and the step falls back); its time is that step
  count times the current attempt's mean step time. Time spent queued, pending, restarting or
  redoing lost steps is the rest.

The status keeps a small summary only, rounded, and changes it only on a material change, so a
scrape does not turn into a status write.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from phalanx.api.models import (
    SIZES_KEPT,
    CheckpointStatus,
    SizeThroughput,
    ThroughputStatus,
    TrainingJobSpec,
    TrainingJobStatus,
)
from phalanx.core.health import GangProgress, median_interval
from phalanx.core.observe import format_time, parse_time

# What counts as a material change of the status summary.
RELATIVE_CHANGE = 0.02  # samples/s and the baseline: 2 %
ABSOLUTE_CHANGE = 0.01  # efficiency and goodput: one point
SIGNIFICANT_DIGITS = 3  # samples/s and the baseline are kept to 3 significant digits


@dataclass(frozen=True)
class PodSample:
    """One scrape of one pod's trainer metrics (the serving process speaks for the whole pod)."""

    at: float  # when it was read, seconds on a monotonic clock
    attempt: int  # phalanx_trainer_attempt
    samples: float  # phalanx_trainer_samples_total
    steps: float  # phalanx_trainer_steps_total (this process's life, i.e. this attempt)
    step_seconds_sum: float  # phalanx_trainer_step_duration_seconds_sum
    step_seconds_count: float  # phalanx_trainer_step_duration_seconds_count
    resumed_from_step: int = -1  # -1: this attempt started fresh
    checkpoint_step: int = -1  # -1: this attempt has not committed a checkpoint yet
    checkpoint_time: float = 0.0  # unix seconds of that checkpoint; 0 when none
    world_size: int = 0  # training processes in the job, as the trainer sees it
    procs_per_pod: int = 1
    samples_per_second: float | None = None  # the pod's own recent rate (EMA gauge), for per-rank views
    last_step_time: float = 0.0  # unix seconds the pod's last step ended; 0 before the first
    wait_seconds: float = 0.0  # phalanx_trainer_collective_wait_seconds_total: waiting for peers
    preflight_seconds: float = 0.0  # phalanx_trainer_preflight_seconds; 0: no preflight
    preflight_bandwidth: float = 0.0  # phalanx_trainer_preflight_bus_bandwidth_bytes_per_second


@dataclass(frozen=True)
class JobTelemetry:
    """One attempt's trainer numbers for the whole job, over the latest window."""

    attempt: int
    replicas: int  # pods of the attempt: N in E(N)
    pods_reporting: int  # pods that answered in the window (at most `replicas`)
    observed_at: datetime  # when the newest sample was read (wall clock, for goodput)
    samples_per_second: float | None = None  # X(N); None until some pod has two samples
    step: int | None = None  # global step reached: the progress the job keeps
    step_seconds: float | None = None  # mean step time of this attempt
    checkpoint_step: int | None = None  # newest checkpoint this attempt committed
    checkpoint_time: float | None = None  # its unix time
    resumed_from_step: int | None = None  # the checkpoint step this attempt resumed from (None: fresh)
    progress: GangProgress | None = None  # each rank's progress and step time, for the health verdicts
    preflight_seconds: float | None = None  # the attempt's preflight, slowest pod (None: none reported)
    preflight_bandwidth: float | None = None  # its all-reduce bus bandwidth, lowest pod


class Change(IntEnum):
    """How a new summary differs from the one in status."""

    NONE = 0  # nothing worth a status write
    DRIFT = 1  # numbers moved beyond the thresholds (the scraper rate-limits these)
    EVENT = 2  # something appeared or vanished, a new checkpoint, a new baseline size: write soon


@dataclass(frozen=True)
class Summary:
    throughput: ThroughputStatus | None
    last_checkpoint: CheckpointStatus | None


# --- windows -> job numbers --------------------------------------------------------------------------


def global_step(sample: PodSample) -> int:
    """The job's step as one pod reports it: where its attempt resumed plus the steps it has done since."""
    return max(sample.resumed_from_step, 0) + int(sample.steps)


def current_run(window: Sequence[PodSample]) -> list[PodSample]:
    """The newest samples of `window` (oldest first) that belong to one run of the trainer: same
    attempt, counters never going back. A restart inside the window starts a new run."""
    if not window:
        return []
    start = len(window) - 1
    while start > 0:
        prev, cur = window[start - 1], window[start]
        if prev.attempt != cur.attempt or cur.samples < prev.samples or cur.steps < prev.steps:
            break
        start -= 1
    return [window[i] for i in range(start, len(window))]  # (a deque takes no slices)


def pod_rate(window: Sequence[PodSample]) -> float | None:
    """samples/s of one pod over its current run within the window; None with fewer than two samples.

    The run's rate starts at its last sample before the first sample was counted: the seconds spent
    importing the framework and joining the rendezvous are start-up, not throughput (counting them
    made a short run's X(1) baseline, and so every efficiency, wrong by tens of percent)."""
    run = current_run(window)
    while len(run) > 1 and run[1].samples == 0:
        run = run[1:]
    if len(run) < 2 or run[-1].samples == 0:
        return None
    first, last = run[0], run[-1]
    elapsed = last.at - first.at
    if elapsed <= 0:
        return None
    return (last.samples - first.samples) / elapsed


def rank_step_seconds(window: Sequence[PodSample]) -> tuple[float | None, int]:
    """One pod's step time less its wait in collectives, as the median of the per-interval means over
    its current run in the window, and how many intervals that is (None below health.MIN_INTERVALS)."""
    run = current_run(window)
    means = []
    for a, b in itertools.pairwise(run):
        steps = b.step_seconds_count - a.step_seconds_count
        if steps < 1:
            continue
        busy = (b.step_seconds_sum - a.step_seconds_sum) - (b.wait_seconds - a.wait_seconds)
        means.append(max(busy, 0.0) / steps)
    return median_interval(means), len(means)


def job_telemetry(
    windows: Mapping[str, Sequence[PodSample]],
    attempt: int,
    replicas: int,
    observed_at: datetime,
    progress: GangProgress | None = None,
) -> JobTelemetry | None:
    """Fold the pods' windows (pod name -> samples, oldest first) of one attempt into job numbers.

    Samples of another attempt are ignored (a pod IP that now serves someone else, or a stale
    window). `replicas` is the attempt's pod count from the spec; the trainers' own world size
    wins when they report one. None when no pod of the attempt reported.
    """
    runs = {name: current_run(w) for name, w in windows.items() if w}
    runs = {name: r for name, r in runs.items() if r and r[-1].attempt == attempt}
    if not runs:
        return None
    newest = [r[-1] for r in runs.values()]
    reported = {s.world_size // max(s.procs_per_pod, 1) for s in newest if s.world_size > 0}
    pods = max(reported) if reported else replicas
    rates = [r for r in (pod_rate(run) for run in runs.values()) if r is not None]
    throughput = sum(rates) / len(rates) * pods if rates else None
    steps = [global_step(s) for s in newest]
    counted = [s for s in newest if s.step_seconds_count > 0]
    step_seconds = sum(s.step_seconds_sum / s.step_seconds_count for s in counted) / len(counted) if counted else None
    checkpoints = [s for s in newest if s.checkpoint_step >= 0 and s.checkpoint_time > 0]
    newest_ckpt = max(checkpoints, key=lambda s: (s.checkpoint_time, s.checkpoint_step), default=None)
    return JobTelemetry(
        attempt=attempt,
        replicas=pods,
        pods_reporting=len(runs),
        observed_at=observed_at,
        samples_per_second=throughput,
        step=max(steps),
        step_seconds=step_seconds,
        checkpoint_step=newest_ckpt.checkpoint_step if newest_ckpt else None,
        checkpoint_time=newest_ckpt.checkpoint_time if newest_ckpt else None,
        resumed_from_step=next((s.resumed_from_step for s in newest if s.resumed_from_step >= 0), None),
        progress=progress,
        preflight_seconds=max((s.preflight_seconds for s in newest if s.preflight_seconds > 0), default=None),
        preflight_bandwidth=min((s.preflight_bandwidth for s in newest if s.preflight_bandwidth > 0), default=None),
    )


# --- the arithmetic -------------------------------------------------------------------------------


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (1234.5 -> 1230.0, 0.012345 -> 0.0123)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def efficiency(samples_per_second: float, replicas: int, baseline_per_replica: float) -> float:
    """Weak-scaling efficiency E(N) = X(N) / (N * X(1))."""
    return samples_per_second / (replicas * baseline_per_replica)


def goodput(step: int, step_seconds: float, wall_seconds: float) -> float:
    """Share of the wall time that produced the progress kept: step x mean step time / wall time, in 0..1."""
    if wall_seconds <= 0:
        return 0.0
    return min(max(step * step_seconds / wall_seconds, 0.0), 1.0)


def baseline(
    spec: TrainingJobSpec, old: ThroughputStatus, samples_per_second: float | None, replicas: int
) -> tuple[float | None, int | None]:
    """X(1) and the replica count it was measured at: declared, or the per-replica throughput at the
    smallest size the job ran at (refreshed while it runs at that size again)."""
    declared = spec.metrics.baseline_samples_per_second
    if declared is not None:
        return declared, 1
    if samples_per_second is None or replicas < 1:
        return old.baseline_samples_per_second, old.baseline_replicas
    if old.baseline_replicas is None or old.baseline_samples_per_second is None or replicas <= old.baseline_replicas:
        return significant(samples_per_second / replicas), replicas
    return old.baseline_samples_per_second, old.baseline_replicas


def record_size(
    sizes: Sequence[SizeThroughput], replicas: int, world_size: int, samples_per_second: float
) -> list[SizeThroughput]:
    """`sizes` with this size's reading replaced, smallest first; over SIZES_KEPT the largest other
    sizes are dropped (the small ones carry the baseline, the current one is being measured)."""
    others = [s for s in sizes if s.replicas != replicas]
    point = SizeThroughput(replicas=replicas, world_size=world_size, samples_per_second=samples_per_second)
    kept = sorted(others, key=lambda s: s.replicas)[: SIZES_KEPT - 1]
    return sorted([*kept, point], key=lambda s: s.replicas)


def summarize(spec: TrainingJobSpec, status: TrainingJobStatus, created: datetime, t: JobTelemetry) -> Summary:
    """The status summary for telemetry `t` of the job's current attempt, starting from `status`."""
    old = status.throughput or ThroughputStatus()
    fresh = t.attempt == status.attempt
    # Rounded first: the efficiency is then exactly what the shown samples/s and baseline give.
    rate = significant(t.samples_per_second) if fresh and t.samples_per_second is not None else None
    base, base_replicas = baseline(spec, old, rate, t.replicas)
    eff = None
    if rate is not None and base and base_replicas:
        eff = round(efficiency(rate, t.replicas, base), 3)
    good = old.goodput
    if fresh and t.step is not None and t.step_seconds is not None:
        wall = (t.observed_at - created).total_seconds()
        good = round(goodput(t.step, t.step_seconds, wall), 2)
    sizes = old.sizes
    if rate is not None:
        sizes = record_size(sizes, t.replicas, t.replicas * spec.effective_procs_per_pod(), rate)
    throughput = ThroughputStatus(
        samples_per_second=rate,
        scaling_efficiency=eff,
        baseline_samples_per_second=base,
        baseline_replicas=base_replicas,
        goodput=good,
        sizes=sizes,
    )
    return Summary(throughput=throughput, last_checkpoint=newer_checkpoint(status.last_checkpoint, t))


def newer_checkpoint(old: CheckpointStatus | None, t: JobTelemetry) -> CheckpointStatus | None:
    """The newest checkpoint known: the status's, unless the trainers committed a later one."""
    if t.checkpoint_step is None or not t.checkpoint_time:
        return old
    when = datetime.fromtimestamp(t.checkpoint_time, UTC)
    known = parse_time(old.time) if old else None
    if old is not None and known is not None and known > when:
        return old
    return CheckpointStatus(step=t.checkpoint_step, time=format_time(when))


def current(status: TrainingJobStatus) -> Summary:
    return Summary(throughput=status.throughput, last_checkpoint=status.last_checkpoint)


def change(old: Summary, new: Summary) -> Change:
    """How much `new` differs from `old`; small jitter is NONE so it never costs a status write."""
    if old.last_checkpoint != new.last_checkpoint:
        return Change.EVENT
    a, b = old.throughput or ThroughputStatus(), new.throughput or ThroughputStatus()
    fields = ("samples_per_second", "scaling_efficiency", "baseline_samples_per_second", "goodput")
    # A size seen for the first time is an event; its reading moves with samples_per_second (same thresholds).
    if [s.replicas for s in a.sizes] != [s.replicas for s in b.sizes]:
        return Change.EVENT
    if a.baseline_replicas != b.baseline_replicas or any(
        (getattr(a, f) is None) != (getattr(b, f) is None) for f in fields
    ):
        return Change.EVENT
    for f in ("samples_per_second", "baseline_samples_per_second"):
        x, y = getattr(a, f), getattr(b, f)
        if x is not None and y is not None and abs(y - x) > RELATIVE_CHANGE * max(abs(x), 1e-9):
            return Change.DRIFT
    for f in ("scaling_efficiency", "goodput"):
        x, y = getattr(a, f), getattr(b, f)
        if x is not None and y is not None and abs(y - x) >= ABSOLUTE_CHANGE - 1e-9:
            return Change.DRIFT
    return Change.NONE


def apply(status: TrainingJobStatus, spec: TrainingJobSpec, created: datetime, t: JobTelemetry) -> Change:
    """Fold telemetry into `status` in place, only when the summary changes materially."""
    new = summarize(spec, status, created, t)
    kind = change(current(status), new)
    if kind is not Change.NONE:
        status.throughput = new.throughput
        status.last_checkpoint = new.last_checkpoint
    return kind
