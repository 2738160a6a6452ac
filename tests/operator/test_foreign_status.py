"""A status someone else writes (`kubectl patch --subresource=status`) is corrected to what the pods show,
with an Event, and never makes the operator delete running pods or restart the gang."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcluster.testing import wait_for
from tests.plugins.operator import JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")


def patch_status(kubectl: Any, namespace: str, name: str, status: dict[str, Any], check: bool = True) -> Any:
    return kubectl(
        "patch", "-n", namespace, f"tj/{name}", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=check,
    )  # fmt: skip


def running_gang(jobs: JobClient, name: str) -> dict[str, str]:
    jobs.create(job_manifest(name, replicas=2))
    jobs.wait_state(name, "Running")
    return {p.metadata.name: p.metadata.uid for p in jobs.pods(name)}


def corrected(jobs: JobClient, name: str, text: str) -> str:
    def event() -> str | None:
        for e in jobs.core.list_namespaced_event(jobs.ns).items:
            if e.involved_object.name == name and e.reason == "StatusCorrected" and text in e.message:
                return str(e.message)
        return None

    return wait_for(event, timeout=30, what=f"a StatusCorrected event about {text}")


def same_pods(jobs: JobClient, name: str, before: dict[str, str]) -> bool:
    pods = jobs.pods(name)
    return {p.metadata.name: p.metadata.uid for p in pods} == before and not any(
        p.metadata.deletion_timestamp for p in pods
    )


@pytest.mark.parametrize("terminal", ["Succeeded", "Failed"])
def test_a_terminal_condition_set_by_hand_on_a_running_job_is_removed(
    terminal: str, jobs: JobClient, kubectl: Any, namespace: str
) -> None:
    name = f"hand-{terminal.lower()}"
    before = running_gang(jobs, name)
    forged = {"type": terminal, "status": "True", "reason": "ByHand", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    patch_status(kubectl, namespace, name, {"conditions": [forged], "completionTime": "2026-01-01T00:00:00Z"})
    message = corrected(jobs, name, f"{terminal}=True")
    assert "not set by phalanx" in message and "2/2 pods of attempt 1 running" in message
    job = jobs.wait_state(name, "Running")
    assert jobs.condition(name, terminal) is None and "completionTime" not in job["status"]
    assert same_pods(jobs, name, before) and job["status"]["restarts"] == 0


def test_an_attempt_set_by_hand_is_corrected_without_a_restart(jobs: JobClient, kubectl: Any, namespace: str) -> None:
    before = running_gang(jobs, "hand-attempt")
    patch_status(kubectl, namespace, "hand-attempt", {"attempt": 7})
    message = corrected(jobs, "hand-attempt", "status.attempt 7")
    assert "corrected to 1" in message
    job = jobs.wait("hand-attempt", lambda j: j["status"]["attempt"] == 1, what="attempt 1 again")
    assert job["status"]["state"] == "Running" and job["status"]["restarts"] == 0
    assert same_pods(jobs, "hand-attempt", before)


def test_a_status_with_an_unreadable_time_is_refused_by_the_apiserver(
    jobs: JobClient, kubectl: Any, namespace: str
) -> None:
    running_gang(jobs, "hand-time")
    out = patch_status(kubectl, namespace, "hand-time", {"startTime": "yesterday"}, check=False)
    assert out.returncode != 0 and "status.startTime" in out.stderr, out.stderr
