"""In-place gang restart (runPolicy.restartMode InPlace): what the reconcile reads from a pod whose
containers the kubelet restarts where they run, instead of a pod that ends.

The pods carry the rule RestartAllContainers for any failed exit of the trainer (core/pods.py), so a
rank that fails does not end its pod: the kubelet restarts every container of it. The failure is seen
only while it does (about two seconds measured: the trainer's state.terminated, with the pod still
Running); afterwards every container's lastState reads "RestartingAllContainers", exit 137, whatever
the cause. The reconcile then records a new attempt and moves the gang's pods to it by their attempt
label; each trainer sees the label change (contract.ATTEMPT_FILE), exits EXIT_RESTART_IN_PLACE, and
the kubelet starts it again with the new attempt in its env. A pod that cannot do that (ended,
deleted, on a lost node, another gang size) is recreated instead; when one has not restarted in time,
the whole gang is recreated as a further attempt.

A failure that no operator saw in its window is not counted: its rank rejoins the same attempt, whose
peers restart the same way, and the gang resumes from its checkpoint by itself.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import replace
from datetime import datetime

from phalanx import contract
from phalanx.api.models import TrainingJobSpec
from phalanx.core.model import PodView
from phalanx.core.observe import parse_time, seconds_left

# The reason of a failure restart (core/reconcile.py): the only restart that goes in place.
GANG_RESTART = "GangRestart"
# How long a pod moved to a new attempt may keep running its old trainer before it is recreated: the
# trainer runtime leaves within a second of the label change; a trainer that does not watch
# ATTEMPT_FILE (another runtime, a hung process) never leaves by itself.
RESTART_TIMEOUT_SECONDS = 30.0
TIMEOUT = "InPlaceRestartTimeout"  # the reason of the attempt that then recreates the gang
NOT_FAILURES = (0, contract.EXIT_RESTART_IN_PLACE)


def restartable(pod: PodView, spec: TrainingJobSpec, lost: Container[str]) -> bool:
    """The pod can join the next attempt where it is: it still runs (or waits to), for this gang size."""
    return (
        pod.phase not in ("Succeeded", "Failed")
        and not pod.terminating
        and pod.name not in lost
        and pod.replicas in (None, spec.replicas)
    )


def failed_run(pod: PodView, attempt_start: str | None) -> PodView | None:
    """The pod as a failure, when its trainer's run ended with a failed exit (not the exit for a
    requested restart) while the pod goes on: the kubelet is restarting its containers in place. Runs
    begun before the attempt (the old gang's, crashing on the broken collective after the restart was
    decided) are not judged. Times have one-second resolution: a run begun in the attempt's first
    second counts as its own."""
    since, began = parse_time(attempt_start), parse_time(pod.started_at)
    if pod.phase in ("Succeeded", "Failed") or pod.exit_code is None or pod.exit_code in NOT_FAILURES:
        return None
    if since is None or began is None or began < since:
        return None
    return replace(pod, phase="Failed")


def runs_attempt(pod: PodView, attempt_start: str | None) -> bool:
    """The pod's trainer runs, in a run begun in the current attempt (not an old trainer still going)."""
    started, since = parse_time(pod.started_at), parse_time(attempt_start)
    return started is not None and (since is None or started >= since)


def still_old(pods: Sequence[PodView], attempt_start: str | None, now: datetime) -> tuple[list[PodView], float | None]:
    """(pods whose trainer still runs a run begun before the attempt, RESTART_TIMEOUT_SECONDS after it
    began; seconds until the next such pod is due, or None)."""
    since = parse_time(attempt_start)
    if since is None:
        return [], None
    overdue: list[PodView] = []
    due: float | None = None
    for p in pods:
        started = parse_time(p.started_at)
        if p.phase != "Running" or started is None or started >= since:
            continue
        left = seconds_left(since, RESTART_TIMEOUT_SECONDS, now)
        if left <= 0:
            overdue.append(p)
        else:
            due = left if due is None else min(due, left)
    return overdue, due
