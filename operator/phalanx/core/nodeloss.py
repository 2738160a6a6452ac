"""Node loss: which of a job's pods sit on a node that is gone, or NotReady for longer than the grace.

Such a pod will never finish by itself: its kubelet cannot confirm a graceful delete, so without the
operator it stays (Running, or Terminating) until the pod garbage collector or the taint manager
removes it, minutes later, and the gang barrier waits that long. A lost pod is removed at once (force
delete, with a UID precondition so only that very pod goes) and its gang restarts as NodeLost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from phalanx.core.model import PodView
from phalanx.core.observe import seconds_left

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class NodeHealth:
    """What node-loss decisions read of a node: its Ready condition."""

    name: str
    ready: bool
    # The Ready condition's lastTransitionTime: while not ready, since when. None when the node has no
    # Ready condition with a time (a node that never reported): it is then never judged lost by time.
    since: datetime | None = None
    reason: str | None = None  # the Ready condition's reason (NodeStatusUnknown, KubeletNotReady, ...)


@dataclass(frozen=True)
class LostPod:
    pod: PodView
    node: str
    why: str  # "was deleted", "has been NotReady for 45 s (NodeStatusUnknown)"


@dataclass(frozen=True)
class NodeLoss:
    lost: list[LostPod]
    # Seconds until the first NotReady node under a live pod passes its grace: look again then.
    recheck_after: float | None = None

    def describe(self) -> str:
        """One line naming every lost node and the pods on it, e.g. "node gpu-2 was deleted under pod
        j-worker-3"; at most a few pod names per node, the rest counted."""
        parts = []
        for node in sorted({lp.node for lp in self.lost}):
            on = sorted(lp.pod.name for lp in self.lost if lp.node == node)
            why = next(lp.why for lp in self.lost if lp.node == node)
            names = ", ".join(on[:3]) + (f" and {len(on) - 3} more" if len(on) > 3 else "")
            parts.append(f"node {node} {why} under pod{'s' if len(on) > 1 else ''} {names}")
        return "; ".join(parts)


def node_loss(
    pods: Sequence[PodView], nodes: Mapping[str, NodeHealth | None], grace_seconds: float, now: datetime
) -> NodeLoss:
    """The unfinished pods bound to a lost node. `nodes` maps each node a pod is bound to onto its
    health, or None once the node is known to be gone; a node missing from the map is not judged.

    A deleted node is lost at once; a NotReady one (Ready False or Unknown) once `grace_seconds` have
    passed since its Ready condition changed. Finished pods are never lost: their outcome is known."""
    lost: list[LostPod] = []
    recheck: float | None = None
    for p in pods:
        if p.node is None or p.phase in FINISHED or p.node not in nodes:
            continue
        health = nodes[p.node]
        if health is None:
            lost.append(LostPod(p, p.node, "was deleted"))
            continue
        if health.ready or health.since is None:
            continue
        left = seconds_left(health.since, grace_seconds, now)
        if left <= 0:
            waited = (now - health.since).total_seconds()
            lost.append(LostPod(p, p.node, f"has been NotReady for {waited:.0f} s ({health.reason or 'NotReady'})"))
        else:
            recheck = left if recheck is None else min(recheck, left)
    return NodeLoss(lost, recheck)
