"""Killing the operator at any moment never creates a duplicate rank or loses a job."""

from __future__ import annotations

from typing import Any

from kubernetes import watch

from tests.plugins.operator import JobClient, job_manifest

WORKERS = 16


def kill_during_creation(jobs: JobClient, operator_process: Any, name: str) -> int:
    """Start an operator that creates pods one at a time, SIGKILL it right after the first pod appears."""
    op = operator_process(env={"PHALANX_API_CONCURRENCY": "1"})
    jobs.create(job_manifest(name, replicas=WORKERS))
    w = watch.Watch()
    for _ in w.stream(
        jobs.core.list_namespaced_pod, jobs.ns, label_selector=f"phalanx.dev/job-name={name}", timeout_seconds=60
    ):
        op.kill()
        break
    w.stop()
    return len(jobs.pods(name))


def test_operator_killed_mid_creation_resumes_without_duplicates(jobs: JobClient, operator_process: Any) -> None:
    created, name = 0, ""
    for attempt in range(3):  # the kill must land while the gang is half created; retry if it was too late
        name = f"big-{attempt}"
        created = kill_during_creation(jobs, operator_process, name)
        if 0 < created < WORKERS:
            break
    assert 0 < created < WORKERS, f"could not kill the operator mid-creation (saw {created} pods)"

    operator_process()  # a fresh operator: it knows nothing but what the API holds
    pods = jobs.wait_pods(
        name,
        lambda ps: len(ps) == WORKERS and all(p.status.phase == "Running" for p in ps),
        timeout=120,
        what=f"{WORKERS} running pods",
    )
    assert sorted(p.metadata.name for p in pods) == sorted(f"{name}-a1-worker-{i}" for i in range(WORKERS))
    assert {p.metadata.labels["phalanx.dev/attempt"] for p in pods} == {"1"}
    ranks = sorted(int(next(e.value for e in p.spec.containers[0].env if e.name == "RANK")) for p in pods)
    assert ranks == list(range(WORKERS))
    job = jobs.wait_state(name, "Running")
    assert job["status"]["restarts"] == 0 and job["status"]["attempt"] == 1
