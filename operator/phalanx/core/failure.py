"""The failure policy: which pod outcomes end the job and which restart the gang."""

from __future__ import annotations

from phalanx import contract
from phalanx.api.models import RestartOn
from phalanx.core.model import PodView

# Pod-level reasons that mean the infrastructure, not the program, ended the pod.
INFRASTRUCTURE_REASONS = {
    "Evicted",
    "NodeLost",
    "Preempting",
    "Terminated",
    "Shutdown",
    "NodeShutdown",
    "UnexpectedAdmissionError",
    "DeletionByPodGC",
    "TerminationByKubelet",
}


def is_failure(pod: PodView) -> bool:
    """Failed, or taken away while it should still be running (eviction, node loss, deletion by others)."""
    if pod.phase == "Failed":
        return True
    return pod.phase != "Succeeded" and (pod.disrupted or pod.terminating)


def retryable(pod: PodView, restart_on: RestartOn) -> bool:
    if restart_on is RestartOn.ALWAYS:
        return True
    if restart_on is RestartOn.NEVER:
        return False
    if pod.disrupted or pod.terminating or pod.reason in INFRASTRUCTURE_REASONS:
        return True
    if pod.exit_code is None:
        return True  # no verdict from the program itself: the node or kubelet ended it
    return contract.is_retryable_exit_code(pod.exit_code)


def describe(pod: PodView) -> str:
    if pod.exit_code is not None:
        return f"pod {pod.name} exited with code {pod.exit_code}" + (f" ({pod.reason})" if pod.reason else "")
    if pod.disrupted or pod.reason in INFRASTRUCTURE_REASONS:
        return f"pod {pod.name} was disrupted ({pod.reason or 'DisruptionTarget'})"
    if pod.terminating:
        return f"pod {pod.name} was deleted while running"
    return f"pod {pod.name} failed" + (f" ({pod.reason})" if pod.reason else "")
