"""The level-based reconcile of one TrainingJob: what exists now in, one plan out.

Every decision is taken from the job's spec, its status and the pods that exist, never from
remembered events, so the operator may crash or restart at any moment. A new attempt is recorded
in status before any pod of it is created; pods carry their attempt in a label, so pods of an
older attempt are recognised and removed before the next gang starts (ranks never mix attempts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from phalanx import contract
from phalanx.api.models import (
    AVOIDED_NODES_KEPT,
    CleanPodPolicy,
    GangBackend,
    LostTime,
    PreflightStatus,
    RestartMode,
    RestartOn,
    RunPolicy,
    TrainingJobSpec,
    TrainingJobStatus,
)
from phalanx.core import conditions as cond
from phalanx.core import health, inplace, names, storage
from phalanx.core import telemetry as tm
from phalanx.core.failure import describe, is_failure, retryable
from phalanx.core.gang import Gang
from phalanx.core.kueue import PODS_READY_TIMEOUT, KueueEviction
from phalanx.core.model import Event, JobView, Plan, PodRef, PodView
from phalanx.core.nodeloss import NodeHealth, NodeLoss, node_loss
from phalanx.core.observe import format_time, parse_time, seconds_left
from phalanx.core.pods import build_pod, build_service, gated, pod_group_gang
from phalanx.core.refusal import CreateRefusal
from phalanx.core.storage import ClaimView
from phalanx.core.validation import validate

TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class AdmissionNote:
    """Why the admission controller keeps a gated job waiting (reason is CamelCase)."""

    reason: str
    message: str
    # The gang can never fit the cluster (ExceedsClusterCapacity): the job fails at once instead of
    # queueing forever (docs/scheduling.md).
    fatal: bool = False
    # Kueue evicted the attempt's Workload (preemption, readiness timeout): the gang stops and queues again.
    eviction: KueueEviction | None = None
    preemptor: str | None = None  # the TrainingJob (namespace/name) Kueue's message names, when known
    # gangBackend PodGroup: the attempt whose Workload and PodGroup exist, so its pods may be created
    # (the scheduler would hold pods whose PodGroup is missing, but the API asks for this order).
    group_ready_attempt: int | None = None


class _Step:
    """One reconcile's working state: the status being built and the plan around it."""

    def __init__(self, job: JobView, now: datetime, failure: str | None = None) -> None:
        self.job, self.now, self.failure = job, now, failure
        self.status = job.status.model_copy(deep=True)
        self.plan = Plan(status=self.status)
        self.lost: set[str] = set()  # pods on a lost node: force-deleted, never deleted gracefully

    def force_delete(self, loss: NodeLoss) -> None:
        self.lost = {lp.pod.name for lp in loss.lost}
        self.plan.force_delete_pods = [PodRef(lp.pod.name, lp.pod.uid) for lp in loss.lost]
        if loss.recheck_after is not None:
            self.plan.requeue(loss.recheck_after)  # a NotReady node's grace ends then

    def condition(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        cond.set_condition(self.status, type_, value, reason, message, self.job.generation, self.now)

    def delete(self, pods: Sequence[PodView]) -> None:
        self.plan.delete_pods += [PodRef(p.name, p.uid) for p in pods if not p.terminating and p.name not in self.lost]

    def move_in_place(self, spec: TrainingJobSpec, pods: Sequence[PodView]) -> None:
        """The gang's pods join the status's attempt where they run; those that cannot are deleted."""
        keep = [p for p in pods if inplace.restartable(p, spec, self.lost)]
        self.plan.relabel_pods += [PodRef(p.name, p.uid) for p in keep]
        self.delete([p for p in pods if p not in keep])

    def fail(self, reason: str, message: str, pods: Sequence[PodView]) -> Plan:
        self.condition(cond.FAILED, True, reason, message)
        return self._end(pods)

    def succeed(self, message: str, pods: Sequence[PodView]) -> Plan:
        self.condition(cond.SUCCEEDED, True, "AllReplicasSucceeded", message)
        return self._end(pods)

    def _end(self, pods: Sequence[PodView]) -> Plan:
        self.plan.create = []  # a finished job creates nothing, whatever was planned before it ended
        self.condition(cond.RUNNING, False, "Finished", "the job has finished")
        if cond.get(self.status, cond.RESTARTING):
            self.condition(cond.RESTARTING, False, "Finished", "")
        self.status.completion_time = format_time(self.now)
        return finished(self, pods)

    def done(self) -> Plan:
        s = self.status
        if self.failure is None and cond.is_true(s, cond.RECONCILE_ERROR):
            self.condition(cond.RECONCILE_ERROR, False, "Reconciled", "the last reconcile succeeded")
        s.state = state_of(s)
        changed = s.model_dump() != self.job.status.model_dump()
        self.plan.status_changed = changed
        if changed:
            self.plan.events = cond.transition_events(self.job.status, s) + self.plan.events
            self.plan.progress_only = _without_progress(s) == _without_progress(self.job.status)
        return self.plan


def _without_progress(status: TrainingJobStatus) -> dict[str, Any]:
    """The status less what changes with every pod that starts: replica counts and condition messages."""
    dump = status.model_dump(exclude={"replicas", "ready_summary"})
    for c in dump["conditions"]:
        c.pop("message")
    return dump


def state_of(status: TrainingJobStatus) -> str:
    for type_, state in (
        (cond.FAILED, "Failed"),
        (cond.SUCCEEDED, "Succeeded"),
        (cond.SUSPENDED, "Suspended"),
        (cond.RESTARTING, "Restarting"),
        (cond.RUNNING, "Running"),
    ):
        if cond.is_true(status, type_):
            return state
    admitted = cond.get(status, cond.ADMITTED)
    if admitted is not None and admitted.status == "False":
        return "Queued"
    return "Starting" if status.attempt else "Pending"


def _correct_foreign(step: _Step, pods: Sequence[PodView]) -> None:
    """Status someone else wrote is set back to what the pods show where they contradict it, with an Event.

    Only a contradiction is corrected, and only towards the pods: a foreign attempt number becomes
    the attempt the pods carry (so no gang restarts), and a foreign Succeeded or Failed goes while
    the pods show a gang that has not ended (so no running pod is deleted). Where no pod can tell (none
    exist) the status stays as written: correcting it could only start pods."""
    s, foreign = step.status, step.job.foreign_status
    kept = [p for p in pods if not p.terminating]
    carried = {p.attempt for p in kept}
    if "attempt" in foreign and carried and s.attempt not in carried:
        real = max(carried)
        step.plan.events.append(
            Event(
                "Warning",
                "StatusCorrected",
                f"status.attempt {s.attempt} was not written by phalanx and no pod carries it; corrected to "
                f"{real}, the attempt of the job's pods",
            )
        )
        s.attempt = real
    current = [p for p in kept if p.attempt == s.attempt]
    alive = [p for p in current if p.phase not in TERMINAL]
    contradicted = {
        cond.SUCCEEDED: bool(current) and any(p.phase != "Succeeded" for p in current),
        cond.FAILED: bool(alive) and not any(is_failure(p) for p in current),
    }
    for type_, wrong in contradicted.items():
        c = cond.get(s, type_)
        if not wrong or c is None or c.status != "True" or f"condition/{type_}" not in foreign:
            continue
        s.conditions = [x for x in s.conditions if x.type != type_]
        s.completion_time = None
        running = sum(p.phase == "Running" for p in current)
        step.plan.events.append(
            Event(
                "Warning",
                "StatusCorrected",
                f"condition {type_}=True ({c.reason}) was not set by phalanx and the pods contradict it "
                f"({running}/{len(current)} pods of attempt {s.attempt} running); removed",
            )
        )


def finished(step: _Step, pods: Sequence[PodView]) -> Plan:
    """A finished job only cleans up its pods and, with a TTL, deletes itself."""
    policy = step.job.spec.run_policy if step.job.spec else None
    clean = policy.clean_pod_policy if policy else CleanPodPolicy.RUNNING
    if clean is CleanPodPolicy.ALL:
        step.delete(pods)
    elif clean is CleanPodPolicy.RUNNING:
        step.delete([p for p in pods if p.phase not in TERMINAL])
    step.status.replicas.active = 0
    step.status.replicas.ready = 0
    step.status.ready_summary = f"0/{step.status.replicas.desired}"
    ttl = policy.ttl_seconds_after_finished if policy else None
    ended = parse_time(step.status.completion_time)
    if ttl is not None and ended is not None:
        remaining = seconds_left(ended, ttl, step.now)
        if remaining <= 0:
            step.plan.delete_job = True
        else:
            step.plan.requeue(remaining)
    return step.done()


def _counts(step: _Step, spec: TrainingJobSpec, current: Sequence[PodView]) -> None:
    r = step.status.replicas
    r.desired = spec.replicas
    r.active = sum(1 for p in current if p.phase not in TERMINAL and not p.terminating)
    r.ready = sum(1 for p in current if p.ready and p.phase == "Running" and not p.terminating)
    r.succeeded = sum(1 for p in current if p.phase == "Succeeded")
    r.failed = sum(1 for p in current if p.phase == "Failed")
    step.status.ready_summary = f"{r.ready}/{r.desired}"
    step.status.world_size = spec.world_size()
    step.status.gpus = spec.replicas * spec.resources.gpus
    step.status.selector = names.selector(step.job.name)


def _new_attempt(step: _Step, current: Sequence[PodView], reason: str, message: str) -> Plan:
    step.status.attempt += 1
    step.status.resumed_from_step = None
    step.status.attempt_start_time = format_time(step.now)
    step.condition(cond.RESTARTING, True, reason, message)
    step.condition(cond.RUNNING, False, reason, message)
    step.condition(cond.STRAGGLER, False, "NewAttempt", "the ranks are judged afresh in the new attempt")
    spec = step.job.spec
    if spec is not None and _in_place(spec, step.status):
        step.move_in_place(spec, current)
    else:
        step.delete(current)
    step.plan.requeue(1)
    return step.done()


def _in_place(spec: TrainingJobSpec, status: TrainingJobStatus) -> bool:
    """The current attempt restarts in place: a failure restart (only that) of an InPlace job that Kueue
    does not queue (each attempt there is a Workload of its own that Kueue admits before pods may run), nor
    the PodGroup gang (a pod's schedulingGroup is immutable and each attempt is a PodGroup of its own)."""
    restarting = cond.get(status, cond.RESTARTING)
    return (
        spec.run_policy.restart_mode is RestartMode.IN_PLACE
        and not spec.scheduling.queue_name
        and spec.scheduling.gang_backend is not GangBackend.POD_GROUP
        and restarting is not None
        and restarting.status == "True"
        and restarting.reason == inplace.GANG_RESTART
    )


def _restart(
    step: _Step,
    spec: TrainingJobSpec,
    current: Sequence[PodView],
    pods: Sequence[PodView],
    reason: str,
    what: str,
    avoid: str | None = None,
) -> Plan:
    """A gang restart for `what`, counted against backoffLimit (Failed once it is used up); `avoid`:
    a node the next attempts are kept off."""
    s, limit = step.status, spec.run_policy.backoff_limit
    if s.restarts >= limit:
        return step.fail(
            "BackoffLimitExceeded", f"{what}; {s.restarts} gang restarts used of backoffLimit={limit}", pods
        )
    s.restarts += 1
    kept_off = ""
    if avoid:
        s.avoided_nodes = health.avoid(s.avoided_nodes, avoid, AVOIDED_NODES_KEPT)
        kept_off = f", kept off node {avoid}"
    return _new_attempt(
        step,
        current,
        reason,
        f"{what}; restarting all {spec.replicas} pods as attempt {s.attempt + 1}{kept_off} "
        f"(restart {s.restarts} of {limit})",
    )


def _evicted(
    step: _Step,
    spec: TrainingJobSpec,
    current: Sequence[PodView],
    pods: Sequence[PodView],
    ev: KueueEviction,
    preemptor: str | None,
) -> Plan:
    """Kueue evicted the attempt's Workload: the gang's pods are deleted gracefully (the trainers save a
    checkpoint on SIGTERM) and the next attempt queues in Kueue with a Workload of its own, resuming from
    the newest checkpoint once admitted. A preemption is not the job's fault and does not count against
    backoffLimit; a readiness timeout is counted like a failed start (each attempt's Workload restarts
    Kueue's own requeue count, so backoffLimit is what bounds it)."""
    s = step.status
    by = f" for TrainingJob {preemptor}" if preemptor else ""
    last = s.last_checkpoint
    saved = f"last committed checkpoint: step {last.step}" if last is not None else "no checkpoint committed yet"
    what = f"Kueue evicted Workload {ev.workload} ({ev.reason or 'Evicted'}){by}: {ev.message}"
    grace = f"the {len(current)} pods get their grace period to save a checkpoint ({saved})"
    step.plan.events.append(Event("Warning", ev.reason or "Evicted", f"attempt {s.attempt}: {what}; {saved}"))
    if ev.reason == PODS_READY_TIMEOUT:
        return _restart(step, spec, current, pods, ev.reason, f"{what}; {grace}")
    return _new_attempt(
        step,
        current,
        ev.reason or "Evicted",
        f"{what}; {grace}; attempt {s.attempt + 1} resumes from the newest checkpoint once Kueue admits it "
        f"again (not counted against backoffLimit: {s.restarts} of {spec.run_policy.backoff_limit} restarts used)",
    )


# How long a program error waits for the rest of its gang to report before it fails the job: a rank
# that is lost (SIGKILL, OOM) and the peer that crashes on the broken collective a moment later can be
# reported in either order, and the peer's exit 1 must not be judged alone.
SETTLE_SECONDS = 3.0


def _settling(first: PodView, current: Sequence[PodView], failed: Sequence[PodView], now: datetime) -> float:
    """Seconds to wait before judging `first`, a program error, while other ranks still run."""
    finished = parse_time(first.finished_at)
    down = {p.name for p in failed}
    if finished is None or not any(p.phase == "Running" and p.name not in down for p in current):
        return 0.0
    return seconds_left(finished, SETTLE_SECONDS, now)


def _cause_line(message: str | None) -> str:
    """The runtime's own `... preflight failed: <cause>` line from a termination message (a log tail)."""
    lines = [line for line in (message or "").splitlines() if "preflight failed: " in line]
    if not lines:
        return "exit code 3 (no termination message)"
    return lines[-1].split("preflight failed: ", 1)[1].strip()[:512]


def _preflight(step: _Step, telemetry: tm.JobTelemetry) -> None:
    """Once per attempt: the preflight result its trainers report goes into status (and its time into lostTime)."""
    s = step.status
    if telemetry.attempt != s.attempt or telemetry.preflight_seconds is None:
        return
    if s.preflight is not None and s.preflight.attempt == s.attempt:
        return
    bandwidth = telemetry.preflight_bandwidth or 0.0
    s.preflight = PreflightStatus(
        attempt=s.attempt,
        seconds=round(telemetry.preflight_seconds, 2),
        bus_bandwidth_bytes_per_second=tm.significant(bandwidth),
    )
    lost = s.lost_time or LostTime()
    seconds = round(lost.preflight_seconds + telemetry.preflight_seconds, 1)
    s.lost_time = lost.model_copy(update={"preflight_seconds": seconds})
    step.plan.events.append(
        Event(
            "Normal",
            "PreflightPassed",
            f"attempt {s.attempt}: preflight passed in {s.preflight.seconds:g}s, all-reduce bus bandwidth "
            f"{bandwidth / 1e9:.3g} GB/s",
        )
    )


def _health(
    step: _Step,
    spec: TrainingJobSpec,
    current: Sequence[PodView],
    pods: Sequence[PodView],
    telemetry: tm.JobTelemetry | None,
    unhealthy_nodes: Mapping[str, str],
) -> Plan | None:
    """Act on the health verdicts (core/health.py) for the current attempt: a restart's plan, or None
    after setting the Straggler condition."""
    s, now = step.status, step.now
    never = spec.run_policy.restart_on is RestartOn.NEVER
    if spec.health.restart_on_unhealthy_gpu:
        bad = health.unhealthy_device(current)
        node = health.on_unhealthy_node(current, unhealthy_nodes) if bad is None else None
        found = (bad.message(), bad.pod.node) if bad else (node.message(), node.node) if node else None
        if found is not None:
            what, where = found
            if never:
                return step.fail(health.GPU_UNHEALTHY, f"{what}; not restarted under restartOn=never", pods)
            return _restart(step, spec, current, pods, health.GPU_UNHEALTHY, what, avoid=where)
    progress = telemetry.progress if telemetry is not None else None
    if progress is None or progress.attempt != s.attempt or not cond.is_true(s, cond.RUNNING):
        return None
    deadline = spec.run_policy.progress_deadline_seconds
    hung = health.hang(progress, deadline, now) if deadline else None
    if hung is not None and deadline:
        what = hung.message(deadline, now)
        if never:
            return step.fail(health.HUNG, f"{what}; not restarted under restartOn=never", pods)
        lost = s.lost_time or LostTime()
        s.lost_time = lost.model_copy(update={"hung_seconds": round(lost.hung_seconds + hung.seconds, 1)})
        return _restart(step, spec, current, pods, health.HUNG, what)
    slow = health.stragglers(progress.ranks, spec.health.straggler.threshold)
    if not slow:
        step.condition(cond.STRAGGLER, False, "NoStraggler", "no rank is slower than the threshold")
        return None
    what = "; ".join(x.message() for x in slow)
    if spec.health.straggler.restart and not never:
        return _restart(step, spec, current, pods, health.STRAGGLER, what, avoid=slow[0].rank.node)
    step.condition(cond.STRAGGLER, True, "SlowRank", what)
    return None


def _waiting_cause(current: Sequence[PodView]) -> tuple[str, str] | None:
    """The most telling reason a pod of the gang is not running yet, copied from the pod."""
    for p in sorted(current, key=lambda p: p.index):
        if p.waiting_reason and p.waiting_reason not in ("ContainerCreating", "PodInitializing"):
            return p.waiting_reason, f"pod {p.name}: {p.waiting_reason}" + (f": {p.message}" if p.message else "")
    for p in sorted(current, key=lambda p: p.index):
        if p.unschedulable:
            return "Unschedulable", f"pod {p.name}: {p.unschedulable}"
    return None


def reconcile(
    job: JobView,
    pods: Sequence[PodView],
    service_exists: bool,
    now: datetime,
    admission: AdmissionNote | None = None,
    claims: Mapping[str, ClaimView] | None = None,
    telemetry: tm.JobTelemetry | None = None,
    refusal: CreateRefusal | None = None,
    failure: str | None = None,
    nodes: Mapping[str, NodeHealth | None] | None = None,
    unhealthy_nodes: Mapping[str, str] | None = None,
) -> Plan:
    """One plan for the job. `admission`: why gang admission keeps it waiting (fatal: it can never fit,
    known before any pod exists); `refusal`: the apiserver's last refusal of a create for it; `failure`:
    the error its reconciles keep failing with, while they do (ReconcileError stays True until then);
    `nodes`: the health of the nodes the pods are bound to, None for a node known to be gone (no
    node-loss decision without it); `unhealthy_nodes`: the nodes of its pods whose GPUs are marked
    unhealthy (node -> why)."""
    step = _Step(job, now, failure)
    s = step.status
    grace = (job.spec.run_policy if job.spec else RunPolicy()).node_lost_grace_seconds
    loss = node_loss(pods, nodes, grace, now) if nodes is not None else NodeLoss([])
    step.force_delete(loss)  # whatever else is decided: no kubelet will ever finish these pods
    if job.deleting:
        return step.plan  # garbage collection removes the other pods; nothing to decide
    if job.foreign_status:
        _correct_foreign(step, pods)
    if cond.is_true(s, cond.SUCCEEDED) or cond.is_true(s, cond.FAILED):
        return finished(step, pods)
    if job.spec is None:
        return step.fail("InvalidSpec", job.spec_error or "spec does not parse", pods)
    spec = job.spec
    problems = validate(job.name, spec)
    if problems:
        return step.fail("InvalidSpec", "; ".join(problems), pods)
    s.observed_generation = job.generation

    if spec.run_policy.suspend:
        step.delete(pods)
        step.condition(cond.SUSPENDED, True, "Suspended", "spec.runPolicy.suspend is true; pods are deleted")
        step.condition(cond.RUNNING, False, "Suspended", "the job is suspended")
        step.condition(cond.ADMITTED, False, "Suspended", "the job is suspended")
        if cond.get(s, cond.RESTARTING):
            step.condition(cond.RESTARTING, False, "Suspended", "")
        _counts(step, spec, [p for p in pods if p.attempt == s.attempt])
        return step.done()
    if cond.is_true(s, cond.SUSPENDED):
        step.condition(cond.SUSPENDED, False, "Resumed", "the job was resumed; a new attempt starts")
        step.plan.events.append(Event("Normal", "Resumed", f"resumed as attempt {s.attempt + 1}"))
        s.attempt += 1
        s.attempt_start_time = format_time(now)
        s.resumed_from_step = None
    if s.attempt == 0:
        s.attempt = 1
        s.attempt_start_time = format_time(now)

    current = [p for p in pods if p.attempt == s.attempt]
    stale = [p for p in pods if p.attempt != s.attempt]
    _counts(step, spec, current)
    if admission is not None and admission.fatal and gated(Gang(job.name, job.namespace, job.uid, spec, s.attempt)):
        return step.fail(admission.reason, admission.message, pods)  # gang admission: it can never fit

    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(s.start_time)
    if deadline and started:
        left = seconds_left(started, deadline, now)
        if left <= 0:
            return step.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={deadline}", pods)
        step.plan.requeue(left)

    if stale:
        # The gang barrier: no rank of the new attempt starts while any rank of an old one lives (in
        # place, the old ranks become the new attempt's: their trainers restart with it).
        if _in_place(spec, s):
            step.move_in_place(spec, stale)
        else:
            step.delete(stale)
        step.plan.requeue(2)
        return step.done()

    if admission is not None and admission.eviction is not None and admission.eviction.attempt == s.attempt:
        return _evicted(step, spec, current, pods, admission.eviction, admission.preemptor)

    policy = spec.run_policy
    # A lost node comes first: the peers of a rank whose node vanished may crash on the broken
    # collective, and that must not be judged as the program's own failure.
    lost_now = [lp for lp in loss.lost if lp.pod.attempt == s.attempt]
    if lost_now:
        what = NodeLoss(lost_now).describe()
        if policy.restart_on is RestartOn.NEVER:
            return step.fail("NodeLost", f"{what}; not retried under restartOn=never", pods)
        if s.restarts >= policy.backoff_limit:
            return step.fail(
                "BackoffLimitExceeded",
                f"{what}; {s.restarts} gang restarts used of backoffLimit={policy.backoff_limit}",
                pods,
            )
        s.restarts += 1
        return _new_attempt(
            step,
            current,
            "NodeLost",
            f"{what}; restarting all {spec.replicas} pods as attempt {s.attempt + 1} "
            f"(restart {s.restarts} of {policy.backoff_limit})",
        )
    # Judge the gang by the failure that came first: when one rank is killed, its peers often crash
    # on the broken collective (exit 1) a moment later. finishedAt has one-second resolution, so
    # within the same second a retryable cause is taken to be the first one.
    failed = [p for p in current if is_failure(p)]
    if policy.restart_mode is RestartMode.IN_PLACE:  # failures the kubelet restarted in place
        failed += [f for p in current if not is_failure(p) and (f := inplace.failed_run(p, s.attempt_start_time))]
    failures = sorted(failed, key=lambda p: (p.finished_at or "~", not retryable(p, policy.restart_on), p.index))
    if failures:
        first = failures[0]
        what = describe(first)
        if spec.preflight is not None and first.exit_code == contract.EXIT_PREFLIGHT_FAILED:
            where = f" on node {first.node}" if first.node else ""
            what = f"preflight failed in pod {first.name}{where}: {_cause_line(first.message)}"
            if policy.restart_on is RestartOn.NEVER:
                return step.fail(health.PREFLIGHT_FAILED, f"{what}; not restarted under restartOn=never", pods)
            return _restart(step, spec, current, pods, health.PREFLIGHT_FAILED, what, avoid=first.node)
        if policy.restart_on is RestartOn.NEVER or not retryable(first, policy.restart_on):
            settle = 0.0 if policy.restart_on is RestartOn.NEVER else _settling(first, current, failed, now)
            if settle > 0:
                step.plan.requeue(settle)
                return step.done()
            return step.fail("PodFailed", f"{what}; not retryable under restartOn={policy.restart_on.value}", pods)
        return _restart(step, spec, current, pods, "GangRestart", what)

    if len(current) >= spec.replicas and all(p.phase == "Succeeded" for p in current):
        return step.succeed(f"all {len(current)} pods exited 0", pods)

    sizes = {p.replicas for p in current if p.replicas}
    if sizes and sizes != {spec.replicas}:
        old = max(sizes)
        return _new_attempt(
            step,
            current,
            "Rescaling",
            f"replicas {old} -> {spec.replicas}: pods get their grace period to checkpoint, then the gang "
            f"restarts at world size {spec.world_size()} as attempt {s.attempt + 1}",
        )

    if policy.restart_mode is RestartMode.IN_PLACE:
        overdue, due = inplace.still_old(current, s.attempt_start_time, now)
        if overdue:
            # Not counted again: the failure that asked for this restart was counted once.
            return _new_attempt(step, current, inplace.TIMEOUT, ", ".join(p.name for p in overdue)
                + f" did not restart in place within {inplace.RESTART_TIMEOUT_SECONDS:g}s; recreating all "
                f"{spec.replicas} pods as attempt {s.attempt + 1}")  # fmt: skip
        if due is not None:
            step.plan.requeue(due)

    verdict = _health(step, spec, current, pods, telemetry, unhealthy_nodes or {})
    if verdict is not None:
        return verdict

    gang = Gang(job.name, job.namespace, job.uid, spec, s.attempt, tuple(s.avoided_nodes))
    have = {p.index for p in current}
    missing = [i for i in range(spec.replicas) if i not in have]
    if missing:
        # Checkpoint storage is settled before any pod exists, so no pod waits on a claim that cannot work.
        checked = storage.check(gang, claims or {})
        step.plan.create += checked.create
        if checked.problem or checked.waiting:
            reason = storage.INVALID if checked.problem else "WaitingForCheckpointStorage"
            step.condition(cond.ADMITTED, False, reason, checked.problem or checked.waiting or "")
            if checked.waiting:
                step.plan.requeue(1)
            return step.done()
    try:
        built = [build_pod(gang, i) for i in missing]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # The CRD's pod template schema keeps such templates out; one that slips through still gets a verdict.
        return step.fail("InvalidSpec", f"spec.template cannot be made into a pod: {type(exc).__name__}: {exc}", pods)
    if not service_exists:
        step.plan.create.append(build_service(gang))
    if built and pod_group_gang(gang) and (admission is None or admission.group_ready_attempt != s.attempt):
        built = []  # the attempt's Workload and PodGroup first (controller/podgroup.py creates them)
    step.plan.create += built
    if missing and refusal is not None:
        step.condition(cond.REPLICA_FAILURE, True, refusal.reason, refusal.message)
    elif not missing:
        step.condition(
            cond.REPLICA_FAILURE, False, "PodsCreated", f"all {spec.replicas} pods of attempt {s.attempt} exist"
        )
    _admission(step, gang, current, missing, admission, refusal)
    ended = _running(step, spec, current, refusal if missing else None)
    if ended is not None:
        return ended  # the startup deadline failed the job: its plan is done, with its Events once
    # Telemetry seam (core/telemetry.py): while the gang runs, fold the trainers' latest numbers into
    # status.throughput and status.lastCheckpoint. Only a material change alters them (values are
    # rounded and compared with thresholds), so a scrape alone never costs a status write.
    if telemetry is not None and cond.is_true(s, cond.RUNNING):
        tm.apply(s, spec, job.created, telemetry)
        _preflight(step, telemetry)
        resumed = telemetry.resumed_from_step
        if telemetry.attempt == s.attempt and resumed is not None and s.resumed_from_step is None:
            s.resumed_from_step = resumed  # once per attempt: the event below is posted once
            step.plan.events.append(
                Event("Normal", "ResumedFromCheckpoint", f"attempt {s.attempt} resumed from checkpoint step {resumed}")
            )
    return step.done()


def _admission(
    step: _Step,
    gang: Gang,
    current: Sequence[PodView],
    missing: Sequence[int],
    note: AdmissionNote | None,
    refusal: CreateRefusal | None,
) -> None:
    spec = gang.spec
    if spec.scheduling.queue_name:
        if current and not missing and not any(p.gated for p in current):
            step.condition(
                cond.ADMITTED, True, "AdmittedByKueue",
                f"Kueue admitted the gang from LocalQueue {spec.scheduling.queue_name}; its flavor is on all "
                f"{len(current)} pods and their scheduling gates are lifted",
            )  # fmt: skip
        elif missing and refusal is not None:
            step.condition(cond.ADMITTED, False, refusal.reason, f"the gang is incomplete: {refusal.message}")
        else:
            reason, message = (note.reason, note.message) if note else ("WaitingForKueue", "waiting for Kueue")
            step.condition(cond.ADMITTED, False, reason, message)
        return
    if pod_group_gang(gang):
        name = names.attempt_name(gang.job, gang.attempt)
        if current and not missing and all(p.node for p in current):
            step.condition(
                cond.ADMITTED, True, "AdmittedByPodGroup",
                f"the kube-scheduler placed all {len(current)} pods of PodGroup {name} as one gang",
            )  # fmt: skip
        elif missing and refusal is not None:
            step.condition(cond.ADMITTED, False, refusal.reason, f"the gang is incomplete: {refusal.message}")
        elif note is None:
            step.condition(cond.ADMITTED, False, "WaitingForPodGroup", f"waiting for Workload and PodGroup {name}")
        elif note.reason == "AdmittedByPodGroup":  # the scheduler says so; the pods' binding is not seen yet
            bound = sum(1 for p in current if p.node)
            step.condition(cond.ADMITTED, False, "WaitingForScheduler", f"PodGroup {name}: {bound}/"
                           f"{spec.replicas} pods bound; the kube-scheduler binds all or none")  # fmt: skip
        else:
            step.condition(cond.ADMITTED, False, note.reason, note.message)
        return
    if not gated(gang):
        who = (
            f"scheduler {spec.scheduling.scheduler_name}"
            if spec.scheduling.scheduler_name
            else "no gang admission (scheduling.gang=false)"
        )
        step.condition(cond.ADMITTED, True, "AdmittedExternally", f"admission is left to {who}")
    elif current and not missing and not any(p.gated for p in current):
        step.condition(cond.ADMITTED, True, "GangAdmitted", f"all {len(current)} pods fit and may schedule")
    elif missing and refusal is not None:
        step.condition(cond.ADMITTED, False, refusal.reason, f"the gang is incomplete: {refusal.message}")
    else:
        reason, message = (note.reason, note.message) if note else ("WaitingForAdmission", "waiting for gang admission")
        step.condition(cond.ADMITTED, False, reason, message)


def _running(
    step: _Step, spec: TrainingJobSpec, current: Sequence[PodView], refusal: CreateRefusal | None
) -> Plan | None:
    """The Running condition; the job's failed plan if the startup deadline has passed."""
    s, now = step.status, step.now
    running = len(current) >= spec.replicas and all(p.phase == "Running" for p in current)
    if running and spec.run_policy.restart_mode is RestartMode.IN_PLACE:
        running = all(inplace.runs_attempt(p, s.attempt_start_time) for p in current)  # not the old trainers
    if running:
        if s.start_time is None:
            s.start_time = format_time(now)
        step.condition(
            cond.RUNNING,
            True,
            "AllReplicasRunning",
            f"{spec.replicas} pods, world size {spec.world_size()}, attempt {s.attempt}",
        )
        restarting = cond.get(s, cond.RESTARTING)
        if restarting is not None and restarting.status == "True":
            since = parse_time(restarting.last_transition_time)
            if since is not None:  # goodput's known losses: the gap between two attempts
                lost = s.lost_time or LostTime()
                gap = max((now - since).total_seconds(), 0.0)
                s.lost_time = lost.model_copy(update={"restart_seconds": round(lost.restart_seconds + gap, 1)})
            step.condition(cond.RESTARTING, False, "GangRunning", f"attempt {s.attempt} is running")
        return None
    if any(p.phase == "Running" for p in current) and any(p.phase == "Succeeded" for p in current):
        return None  # ranks are finishing one by one; keep Running as it was
    cause = (refusal.reason, refusal.message) if refusal else _waiting_cause(current)
    reason, message = cause or (
        "Starting",
        f"{sum(p.phase == 'Running' for p in current)}/{spec.replicas} pods running",
    )
    step.condition(cond.RUNNING, False, reason, message)
    # Startup deadline: counted from admission, so time spent queued for capacity does not count; pods
    # the apiserver refuses are never admitted, so for them it counts from the first refusal.
    limit = spec.run_policy.startup_deadline_seconds
    admitted, refused = cond.get(s, cond.ADMITTED), cond.get(s, cond.REPLICA_FAILURE)
    since = (
        parse_time(admitted.last_transition_time)
        if admitted and admitted.status == "True"
        else parse_time(refused.last_transition_time)
        if refusal and refused and refused.status == "True"
        else None
    )
    if limit and since:
        left = seconds_left(since, limit, now)
        if left <= 0:
            return step.fail(
                cause[0] if cause else "StartupDeadlineExceeded",
                f"pods not running after startupDeadlineSeconds={limit}: {message}",
                current,
            )
        step.plan.requeue(left)
    return None
