"""`kubectl phalanx status JOB`: one job's state, its restarts and their causes, why it waits, each
rank's progress, the last checkpoint, efficiency and goodput.

Everything shown is read, not decided: the operator's status (through its pydantic model), its
Events, the pods (through the operator's own pod reader) and each rank's /metrics through the API
server's pod proxy (through the operator's own exposition parser).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from phalanx.api.models import Condition, TrainingJobStatus
from phalanx.cli import render
from phalanx.cli.cluster import Body
from phalanx.controller.scraper import parse_exposition
from phalanx.core import conditions as cond
from phalanx.core.model import JobView, PodView
from phalanx.core.observe import job_view, parse_time, pod_view
from phalanx.core.telemetry import global_step

# The Events that start a new attempt (reasons of the Restarting condition, and a resume).
ATTEMPT_EVENTS = ("GangRestart", "Rescaling", "Resumed")
WAITING_STATES = ("Pending", "Queued", "Starting", "Restarting", "Suspended")
_ATTEMPT = re.compile(r"as attempt (\d+)")
LAST_STEP_NOTE = {"unreachable": "no metrics", "unreadable": "no metrics", "skipped": "not read"}


def _seconds_since(stamp: str | None, now: datetime) -> float | None:
    when = parse_time(stamp)
    return None if when is None else max((now - when).total_seconds(), 0.0)


def _condition(c: Condition, now: datetime) -> dict[str, Any]:
    return {
        "type": c.type,
        "status": c.status,
        "reason": c.reason,
        "message": c.message,
        "since": c.last_transition_time,
        "seconds": _seconds_since(c.last_transition_time, now),
    }


def restart_history(events: Sequence[Body], status: TrainingJobStatus, now: datetime) -> list[dict[str, Any]]:
    """Each new attempt with its cause, from the job's Events; the Restarting condition when they expired."""
    out = []
    for e in events:
        if e.get("reason") not in ATTEMPT_EVENTS:
            continue
        message = e.get("message") or ""
        found = _ATTEMPT.search(message)
        stamp = e.get("lastTimestamp") or e.get("eventTime")
        out.append(
            {
                "attempt": int(found.group(1)) if found else None,
                "reason": e["reason"],
                "message": message,
                "time": stamp,
                "seconds": _seconds_since(stamp, now),
            }
        )
    restarting = cond.get(status, cond.RESTARTING)
    if not out and restarting is not None and restarting.reason in ATTEMPT_EVENTS:
        found = _ATTEMPT.search(restarting.message)
        out.append(
            {
                "attempt": int(found.group(1)) if found else status.attempt,
                "reason": restarting.reason,
                "message": restarting.message,
                "time": restarting.last_transition_time,
                "seconds": _seconds_since(restarting.last_transition_time, now),
            }
        )
    return out


def waiting(status: TrainingJobStatus, now: datetime) -> dict[str, Any] | None:
    """Why the job is not running, in the operator's words (its messages carry the numbers)."""
    state = status.state or "Pending"
    if state not in WAITING_STATES:
        return None
    # (condition, the value that explains the wait): Suspended/Restarting when True, the others when False.
    order = {
        "Suspended": ((cond.SUSPENDED, "True"),),
        "Queued": ((cond.ADMITTED, "False"),),
        "Restarting": ((cond.RESTARTING, "True"), (cond.RUNNING, "False")),
    }.get(state, ((cond.ADMITTED, "False"), (cond.RUNNING, "False")))
    for type_, value in order:
        c = cond.get(status, type_)
        if c is not None and c.status == value:
            return {"state": state, **_condition(c, now)}
    return {
        "state": state,
        "type": None,
        "status": None,
        "reason": "NoStatusYet",
        "message": "the operator has not acted on the job yet",
        "since": None,
        "seconds": None,
    }


def ended(status: TrainingJobStatus, now: datetime) -> dict[str, Any] | None:
    for type_ in (cond.FAILED, cond.SUCCEEDED):
        c = cond.get(status, type_)
        if c is not None and c.status == "True":
            return _condition(c, now)
    return None


def _ranks(pod: PodView, procs_per_pod: int) -> str:
    first = pod.index * procs_per_pod
    return str(first) if procs_per_pod == 1 else f"{first}-{first + procs_per_pod - 1}"


def rank_rows(
    job: JobView,
    pods: Sequence[PodView],
    metrics: Mapping[str, str | None],
    wall: float,
    skipped: Collection[str] = (),
) -> list[dict[str, Any]]:
    """One row per pod of the current attempt: its ranks, phase and what its trainer reports."""
    procs = job.spec.effective_procs_per_pod() if job.spec else 1
    rows = []
    for pod in sorted(pods, key=lambda p: p.index):
        if pod.attempt != job.status.attempt:
            continue
        text = metrics.get(pod.name)
        sample = parse_exposition(text, at=0.0) if text else None
        if sample is not None and sample.attempt != pod.attempt:
            sample = None  # another attempt's trainer behind a reused address
        rows.append(
            {
                "pod": pod.name,
                "index": pod.index,
                "ranks": _ranks(pod, procs),
                "phase": "Terminating" if pod.terminating else pod.phase,
                "node": pod.node,
                "metrics": _metrics_state(pod, sample is not None, text, skipped),
                "step": global_step(sample) if sample else None,
                "samplesPerSecond": sample.samples_per_second if sample else None,
                "lastStepSeconds": max(wall - sample.last_step_time, 0.0)
                if sample and sample.last_step_time > 0
                else None,
            }
        )
    return rows


def _metrics_state(pod: PodView, read: bool, text: str | None, skipped: Collection[str]) -> str:
    """ok; unreadable (an answer, not this attempt's trainer); unreachable; skipped (address outside
    PHALANX_SCRAPE_NETWORKS); none (the pod is not running)."""
    if read:
        return "ok"
    if text:
        return "unreadable"
    if pod.name in skipped:
        return "skipped"
    return "unreachable" if pod.phase == "Running" else "none"


def report(
    body: Body,
    pod_bodies: Sequence[Body],
    events: Sequence[Body],
    metrics: Mapping[str, str | None],
    now: datetime,
    wall: float | None = None,
    skipped: Collection[str] = (),
) -> dict[str, Any]:
    """The whole status report as plain data: what `-o json|yaml` prints and the text view renders."""
    job = job_view(body)
    s = job.status
    spec = job.spec
    pods = [pod_view(p) for p in pod_bodies]
    t = s.throughput
    ckpt = s.last_checkpoint
    return {
        "name": job.name,
        "namespace": job.namespace,
        "state": s.state or "Pending",
        "framework": spec.framework.value if spec else None,
        "strategy": spec.effective_strategy().value if spec else None,
        "replicas": spec.replicas if spec else None,
        "procsPerPod": spec.effective_procs_per_pod() if spec else None,
        "worldSize": s.world_size if s.world_size is not None else (spec.world_size() if spec else None),
        "gpus": s.gpus,
        "ready": s.ready_summary,
        "attempt": s.attempt,
        "restarts": s.restarts,
        "backoffLimit": spec.run_policy.backoff_limit if spec else None,
        "created": body["metadata"].get("creationTimestamp"),
        "startTime": s.start_time,
        "completionTime": s.completion_time,
        "restartHistory": restart_history(events, s, now),
        "waiting": waiting(s, now),
        "ended": ended(s, now),
        "lastCheckpoint": None
        if ckpt is None
        else {"step": ckpt.step, "time": ckpt.time, "seconds": _seconds_since(ckpt.time, now)},
        "resumedFromStep": s.resumed_from_step,
        "throughput": None
        if t is None
        else {
            "samplesPerSecond": t.samples_per_second,
            "scalingEfficiency": t.scaling_efficiency,
            "baselineSamplesPerSecond": t.baseline_samples_per_second,
            "baselineReplicas": t.baseline_replicas,
            "baselineDeclared": bool(spec and spec.metrics.baseline_samples_per_second is not None),
            "goodput": t.goodput,
        },
        "ranks": rank_rows(job, pods, metrics, time.time() if wall is None else wall, skipped),
        "conditions": [_condition(c, now) for c in s.conditions],
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def text(r: dict[str, Any], now: datetime) -> str:
    """The report for a person: labelled lines first, then the ranks table, then the conditions."""
    lines = []

    def line(label: str, value: str) -> None:
        lines.append(f"{label + ':':<12} {value}")

    line("Name", r["name"])
    line("Namespace", r["namespace"])
    limit = f" of backoffLimit {r['backoffLimit']}" if r["backoffLimit"] is not None else ""
    line("State", f"{r['state']}   attempt {r['attempt']}, {_plural(r['restarts'], 'restart')}{limit}")
    if r["framework"]:
        gpus = f", {_plural(r['gpus'], 'GPU')}" if r["gpus"] else ""
        line(
            "Job",
            f"{r['framework']} {r['strategy']}, {_plural(r['replicas'], 'pod')} x "
            f"{r['procsPerPod']} {'process' if r['procsPerPod'] == 1 else 'processes'} = "
            f"world size {r['worldSize']}{gpus}, {r['ready'] or render.NONE} ready",
        )
    for label, key in (("Created", "created"), ("Started", "startTime"), ("Completed", "completionTime")):
        if r[key]:
            line(label, f"{r[key]} ({render.age(_seconds_since(r[key], now))} ago)")
    w = r["waiting"]
    if w:
        since = f" for {render.age(w['seconds'])}" if w["seconds"] is not None else ""
        line("Waiting", f"{w['state']}{since}: {w['reason']}: {w['message']}")
    e = r["ended"]
    if e:
        line(e["type"], f"{e['reason']} {render.age(e['seconds'])} ago: {e['message']}")
    if r["restartHistory"]:
        lines.append("Restarts:")
        lines.append(
            render.table(
                ["ATTEMPT", "REASON", "AGE", "CAUSE"],
                [
                    [str(h["attempt"] or render.NONE), h["reason"], render.age(h["seconds"]), h["message"]]
                    for h in r["restartHistory"]
                ],
                indent="  ",
            )
        )
    c = r["lastCheckpoint"]
    resumed = f"; attempt {r['attempt']} resumed from step {r['resumedFromStep']}" if r["resumedFromStep"] else ""
    line("Checkpoint", f"step {c['step']}, {render.age(c['seconds'])} old ({c['time']}){resumed}" if c else "none yet")
    t = r["throughput"]
    if t and t["samplesPerSecond"] is not None:
        base = ""
        if t["baselineSamplesPerSecond"] is not None:
            how = "declared" if t["baselineDeclared"] else f"measured at {_plural(t['baselineReplicas'], 'pod')}"
            base = f" (X(1) {render.rate(t['baselineSamplesPerSecond'])} samples/s per pod, {how})"
        line(
            "Throughput",
            f"{render.rate(t['samplesPerSecond'])} samples/s   efficiency "
            f"{render.fraction(t['scalingEfficiency'], 3)}{base}   goodput {render.fraction(t['goodput'])}",
        )
    else:
        why = "the job is not running" if r["state"] != "Running" else "the operator has not read two scrapes yet"
        good = f"; goodput {render.fraction(t['goodput'])}" if t and t["goodput"] is not None else ""
        line("Throughput", f"no metrics yet ({why}){good}")
    if r["ranks"]:
        lines.append(f"Ranks (attempt {r['attempt']}):")
        lines.append(
            render.table(
                ["RANK", "POD", "PHASE", "NODE", "STEP", "SAMPLES/S", "LAST STEP"],
                [
                    [
                        x["ranks"],
                        x["pod"],
                        x["phase"],
                        x["node"] or render.NONE,
                        render.NONE if x["step"] is None else str(x["step"]),
                        render.rate(x["samplesPerSecond"]),
                        f"{render.age(x['lastStepSeconds'])} ago"
                        if x["lastStepSeconds"] is not None
                        else LAST_STEP_NOTE.get(x["metrics"], render.NONE),
                    ]
                    for x in r["ranks"]
                ],
                indent="  ",
            )
        )
    lines.append("Conditions:")
    lines.append(
        render.table(
            ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            [[c["type"], c["status"], c["reason"], render.age(c["seconds"]), c["message"]] for c in r["conditions"]],
            indent="  ",
        )
    )
    return "\n".join(lines) + "\n"
