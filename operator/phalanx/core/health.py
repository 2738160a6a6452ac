"""Health verdicts on a running gang: hung, a straggler, an unhealthy GPU. Pure: no I/O.

The inputs are what the scraper observed of each rank (controller/scraper.py) and what the kubelet
wrote on the pods; docs/health.md describes every signal and how noise is kept out:

* Hung: no rank's step advanced for runPolicy.progressDeadlineSeconds. The clock starts when a rank
  of the attempt was first seen with a step done (start-up is not a hang) and needs at least
  MIN_LOOKS scrape rounds after the last advance, so no verdict rests on one scrape.
* Straggler: a rank's step time less its wait for peers in collectives, as the median over the
  scrape intervals in the window (at least MIN_INTERVALS of them), is `threshold` times the median
  of the other ranks'. One slow step (a checkpoint, a GC pause) moves one interval's mean, not the
  median of several.
* Unhealthy GPU: a device the kubelet allocated to a rank's container reports health Unhealthy.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from phalanx.api.models import TrainingJobSpec, TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core.model import PodView

# Scrape rounds after the last advance before a hang is declared (each round reads every rank).
MIN_LOOKS = 2
# Scrape intervals a rank's step time needs before it is compared (each one the mean over its steps).
MIN_INTERVALS = 3
# A rank this little slower in absolute terms is never a straggler, whatever the ratio (timer noise
# on sub-millisecond steps).
MIN_EXCESS_SECONDS = 0.001

# Reasons of the Restarting condition (and of Failed once backoffLimit is used up).
HUNG = "Hung"
STRAGGLER = "Straggler"
GPU_UNHEALTHY = "GPUUnhealthy"
PREFLIGHT_FAILED = "PreflightFailed"


@dataclass(frozen=True)
class RankProgress:
    """What the operator saw of one rank pod (its local rank 0 speaks for it) in the current attempt."""

    pod: str
    index: int
    node: str | None
    step: int | None = None  # global step last reported; None: never answered
    progressed_at: datetime | None = None  # when its step was last seen to advance; None: no step done yet
    answered_at: datetime | None = None  # its metrics endpoint's last answer
    step_seconds: float | None = None  # median step time less collective wait over the window
    intervals: int = 0  # scrape intervals that median is over


@dataclass(frozen=True)
class GangProgress:
    """The ranks of one attempt as the scraper last saw them."""

    attempt: int
    ranks: tuple[RankProgress, ...]
    looks_since_progress: int  # scrape rounds since a rank was last seen to advance


@dataclass(frozen=True)
class Hang:
    since: datetime  # the last advance of any rank
    seconds: float
    step: int  # the highest step any rank reached
    first: RankProgress  # the rank that stopped first (lowest step, then silent longest)

    def message(self, deadline: int, now: datetime) -> str:
        r = self.first
        where = f"pod {r.pod} (rank pod {r.index}" + (f" on node {r.node})" if r.node else ")")
        if r.answered_at is None:
            detail = "its metrics endpoint never answered"
        else:
            silent = (now - r.answered_at).total_seconds()
            detail = f"at step {r.step}" + (f", metrics endpoint silent for {silent:.0f}s" if silent >= 1 else "")
        return (
            f"no rank advanced for {self.seconds:.0f}s (progressDeadlineSeconds={deadline}); last step "
            f"{self.step}; {where} stopped first: {detail}"
        )


def hang(progress: GangProgress, deadline: float, now: datetime) -> Hang | None:
    """The gang's hang, once no rank advanced for `deadline` seconds; None while one does or before the first step."""
    started = [r for r in progress.ranks if r.progressed_at is not None]
    if not started or progress.looks_since_progress < MIN_LOOKS:
        return None
    since = max(r.progressed_at for r in started if r.progressed_at is not None)
    seconds = (now - since).total_seconds()
    if seconds < deadline:
        return None
    oldest = datetime.min.replace(tzinfo=since.tzinfo)
    first = min(
        progress.ranks,
        key=lambda r: (r.step if r.step is not None else -1, r.answered_at or oldest, r.index),
    )
    step = max((r.step for r in progress.ranks if r.step is not None), default=0)
    return Hang(since=since, seconds=seconds, step=step, first=first)


@dataclass(frozen=True)
class Straggler:
    rank: RankProgress
    ratio: float  # its step time over the median of the others'
    median_seconds: float

    def message(self) -> str:
        # Rounded and without the seconds themselves, so the condition's text changes only with the verdict.
        where = f" on {self.rank.node}" if self.rank.node else ""
        ratio = f"{self.ratio:.1f}x" if self.ratio != float("inf") else "far"
        return f"{self.rank.pod}{where} is {ratio} slower than the median of the other ranks"


def stragglers(ranks: Sequence[RankProgress], threshold: float) -> list[Straggler]:
    """Ranks slower than `threshold` x the median of the others, slowest first. Needs two timed ranks."""
    timed = [r for r in ranks if r.step_seconds is not None and r.intervals >= MIN_INTERVALS]
    if len(timed) < 2:
        return []
    found = []
    for r in timed:
        mine = r.step_seconds or 0.0
        median = statistics.median(o.step_seconds or 0.0 for o in timed if o is not r)
        if mine - median < MIN_EXCESS_SECONDS:
            continue
        ratio = mine / median if median > 0 else float("inf")
        if ratio >= threshold:
            found.append(Straggler(rank=r, ratio=ratio, median_seconds=median))
    return sorted(found, key=lambda s: (-s.ratio, s.rank.index))


def needs_reconcile(spec: TrainingJobSpec, status: TrainingJobStatus, progress: GangProgress, now: datetime) -> bool:
    """Whether the job's reconcile has a health verdict to act on: a hang, or stragglers found or gone."""
    deadline = spec.run_policy.progress_deadline_seconds
    if deadline and hang(progress, deadline, now) is not None:
        return True
    return bool(stragglers(progress.ranks, spec.health.straggler.threshold)) or cond.is_true(status, cond.STRAGGLER)


def median_interval(values: Sequence[float]) -> float | None:
    """The median of per-interval step times, or None with fewer than MIN_INTERVALS of them."""
    return statistics.median(values) if len(values) >= MIN_INTERVALS else None


@dataclass(frozen=True)
class UnhealthyDevice:
    pod: PodView
    resource: str
    device: str
    health: str

    def message(self) -> str:
        node = self.pod.node or "an unknown node"
        return (
            f"device {self.device} ({self.resource}) of pod {self.pod.name} on node {node} is {self.health} "
            "(kubelet allocatedResourcesStatus)"
        )


def unhealthy_device(pods: Sequence[PodView]) -> UnhealthyDevice | None:
    """The first rank pod (by index) still running on a device the kubelet reports Unhealthy."""
    for p in sorted(pods, key=lambda p: p.index):
        if p.phase in ("Succeeded", "Failed") or p.terminating:
            continue
        for resource, device, health in p.devices:
            if health == "Unhealthy":
                return UnhealthyDevice(p, resource, device, health)
    return None


@dataclass(frozen=True)
class NodeSignals:
    """What marks a node's accelerators unhealthy, set by the operator's environment (docs/health.md):
    node conditions (type, status), e.g. the EKS node monitoring agent's AcceleratedHardwareReady=False,
    and taint keys that GPU health tooling puts on a node."""

    conditions: tuple[tuple[str, str], ...] = (("AcceleratedHardwareReady", "False"),)
    taints: tuple[str, ...] = ()


def node_unhealthy(
    conditions: Sequence[Mapping[str, Any]], taints: Sequence[Mapping[str, Any]], signals: NodeSignals
) -> str | None:
    """Why the node's accelerators count as unhealthy (quoting the condition or taint), or None."""
    for c in conditions:
        if (str(c.get("type")), str(c.get("status"))) in signals.conditions:
            why = f"condition {c.get('type')}={c.get('status')}"
            detail = ": ".join(str(x) for x in (c.get("reason"), c.get("message")) if x)
            return f"{why} ({detail})" if detail else why
    for t in taints:
        if t.get("key") in signals.taints:
            return f"taint {t.get('key')}" + (f"={t['value']}" if t.get("value") else "") + f":{t.get('effect')}"
    return None


@dataclass(frozen=True)
class UnhealthyNode:
    pod: PodView
    node: str
    why: str

    def message(self) -> str:
        return f"node {self.node} of pod {self.pod.name} is unhealthy: {self.why}"


def on_unhealthy_node(pods: Sequence[PodView], unhealthy: Mapping[str, str]) -> UnhealthyNode | None:
    """The first rank pod (by index) still running on a node marked unhealthy (node name -> why)."""
    for p in sorted(pods, key=lambda p: p.index):
        if p.node is not None and p.node in unhealthy and p.phase not in ("Succeeded", "Failed") and not p.terminating:
            return UnhealthyNode(p, p.node, unhealthy[p.node])
    return None


def avoid(nodes: Sequence[str], node: str, keep: int) -> list[str]:
    """`nodes` with `node` added last (moved there if present), the oldest dropped beyond `keep`."""
    return [*[n for n in nodes if n != node], node][-keep:]
