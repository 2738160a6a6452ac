"""Test helpers that end simulated pods on purpose (kwok Stages in stages/sim-outcome.yaml), or keep them
from starting (stages/sim-hold.yaml).

A pod only ends when it is Running and carries OUTCOME; the other annotations refine how. Put the same
annotations on a pod template (outcome_annotations()) to make every pod of a workload end that way.
A bound pod carrying HOLD stays Pending and not Ready, its containers waiting (ContainerCreating), until
release_pod() removes the annotation.
"""

from __future__ import annotations

import re
from typing import Any

ANNOTATION_PREFIX = "sim.phalanx.dev/"
OUTCOME = ANNOTATION_PREFIX + "outcome"
EXIT_CODE = ANNOTATION_PREFIX + "exit-code"
REASON = ANNOTATION_PREFIX + "reason"
MESSAGE = ANNOTATION_PREFIX + "message"
DELAY = ANNOTATION_PREFIX + "delay"
HOLD = ANNOTATION_PREFIX + "hold"
SUCCEED = "succeed"
FAIL = "fail"

# Go's time.ParseDuration syntax: kwok silently ignores anything else (e.g. a bare "2").
_GO_DURATION = re.compile(r"^(0|(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")


def check_delay(delay: str) -> str:
    if not _GO_DURATION.match(delay):
        raise ValueError(f"delay {delay!r} is not a Go duration such as '0s', '500ms', '2s', '1m30s'")
    return delay


def outcome_annotations(
    outcome: str, exit_code: int | None = None, reason: str | None = None, delay: str = "0s", message: str = ""
) -> dict[str, str]:
    """Annotations that make a Running pod succeed or fail; usable in pod templates."""
    if outcome not in (SUCCEED, FAIL):
        raise ValueError(f"outcome must be {SUCCEED!r} or {FAIL!r}, got {outcome!r}")
    ann = {OUTCOME: outcome, DELAY: check_delay(delay)}
    if outcome == FAIL:
        code = 1 if exit_code is None else exit_code
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            raise ValueError(f"exit_code must be an int in 0..255, got {exit_code!r}")
        ann[EXIT_CODE] = str(code)
        ann[REASON] = reason or "Error"
        if message:
            ann[MESSAGE] = message
    return ann


def make_pod_succeed(core_v1: Any, ns: str, name: str, delay: str = "0s") -> None:
    """Make a (Running) pod exit 0 after `delay`: phase Succeeded, reason Completed."""
    _annotate(core_v1, ns, name, outcome_annotations(SUCCEED, delay=delay))


def make_pod_fail(
    core_v1: Any, ns: str, name: str, exit_code: int, reason: str = "Error", delay: str = "0s", message: str = ""
) -> None:
    """Make a (Running) pod fail after `delay`: phase Failed, every container terminated with
    exit_code (an integer in the pod status) and reason."""
    _annotate(core_v1, ns, name, outcome_annotations(FAIL, exit_code, reason, delay, message))


def hold_annotations(reason: str = "ContainerCreating") -> dict[str, str]:
    """Annotations that keep a bound pod from starting, its containers waiting with `reason`."""
    return {HOLD: reason}


def release_pod(core_v1: Any, ns: str, name: str) -> None:
    """Let a held pod start: kwok's stock stage makes it Running and Ready."""
    core_v1.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {HOLD: None}}})


def _annotate(core_v1: Any, ns: str, name: str, annotations: dict[str, str]) -> None:
    # Clear the keys not set this time so an earlier call's exit code or reason cannot leak in.
    keys = (OUTCOME, EXIT_CODE, REASON, MESSAGE, DELAY)
    body = {"metadata": {"annotations": {k: annotations.get(k) for k in keys}}}
    core_v1.patch_namespaced_pod(name, ns, body)
