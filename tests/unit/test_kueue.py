"""Admission by Kueue (core/kueue.py): the Workload phalanx makes per attempt, and what it does with Kueue's verdict."""

from __future__ import annotations

from typing import Any

import pytest

from phalanx.api.models import TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core import kueue
from phalanx.core.gang import Gang
from phalanx.core.reconcile import AdmissionNote, reconcile
from tests.unit.specs import T0, job, pod, spec

GPU_SPEC = {"resources": {"gpus": 8}, "scheduling": {"queueName": "team"}}


def gang(attempt: int = 1, replicas: int = 2) -> Gang:
    return Gang("j", "team-a", "uid", spec(replicas=replicas, **GPU_SPEC), attempt)


def workload(name: str = "j-a1", attempt: int = 1, conditions: list[dict[str, Any]] | None = None,
             flavors: dict[str, str] | None = None) -> kueue.WorkloadView:  # fmt: skip
    status: dict[str, Any] = {"conditions": conditions or []}
    if flavors is not None:
        status["admission"] = {"clusterQueue": "cq", "podSetAssignments": [{"name": "trainers", "flavors": flavors}]}
    return kueue.workload_view(
        {"metadata": {"name": name, "labels": {"phalanx.dev/attempt": str(attempt)}}, "status": status}
    )


PENDING = {
    "type": "QuotaReserved",
    "status": "False",
    "reason": "Pending",
    "message": "couldn't assign flavors to pod set trainers: insufficient unused quota for nvidia.com/gpu in "
    "flavor h100, 16 more needed",
}
ADMITTED = [{"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"},
            {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "ok"}]  # fmt: skip
H100 = kueue.FlavorPlacement(
    {"cloud.google.com/gke-accelerator": "h100"}, ({"key": "nvidia.com/gpu", "operator": "Exists"},)
)


def test_workload_is_the_whole_gang_with_its_gpu_requests_and_owner() -> None:
    wl = kueue.build_workload(gang(attempt=3, replicas=2))
    assert wl["metadata"]["name"] == "j-a3"
    assert wl["spec"]["queueName"] == "team"
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    assert wl["metadata"]["ownerReferences"][0]["controller"] is True
    (pod_set,) = wl["spec"]["podSets"]
    assert pod_set["count"] == 2
    container = next(c for c in pod_set["template"]["spec"]["containers"] if c["name"] == "trainer")
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert "schedulingGates" not in pod_set["template"]["spec"]


def test_workload_name_fits_a_dns_label() -> None:
    name = kueue.workload_name("x" * 63, 12)
    assert len(name) <= 63 and name.endswith("-a12")


@pytest.mark.parametrize(
    ("workloads", "finished", "create", "delete", "reason"),
    [
        ([], False, "j-a1", [], kueue.WAITING),
        ([workload(conditions=[PENDING])], False, None, [], "Pending"),
        ([workload("j-a0", 0, ADMITTED, {"nvidia.com/gpu": "h100"})], False, "j-a1", ["j-a0"], kueue.WAITING),
        ([workload(conditions=ADMITTED, flavors={"nvidia.com/gpu": "h100"})], True, None, ["j-a1"], None),
    ],
    ids=["no-workload-yet", "pending-in-kueue", "older-attempt-deleted", "finished-job-releases-quota"],
)
def test_decide(workloads: list[kueue.WorkloadView], finished: bool, create: str | None, delete: list[str],
                reason: str | None) -> None:  # fmt: skip
    step = kueue.decide(gang(), workloads, {"h100": H100}, finished=finished)
    assert (step.create["metadata"]["name"] if step.create else None) == create
    assert step.delete == delete
    assert (step.note.reason if step.note else None) == reason
    assert step.placement is None


def test_pending_note_carries_kueues_own_message() -> None:
    step = kueue.decide(gang(), [workload(conditions=[PENDING])], {})
    assert step.note is not None
    assert "insufficient unused quota for nvidia.com/gpu in flavor h100, 16 more needed" in step.note.message
    assert "LocalQueue team" in step.note.message


def test_admitted_gives_the_flavors_placement_once_the_flavor_is_known() -> None:
    admitted = [workload(conditions=ADMITTED, flavors={"nvidia.com/gpu": "h100", "cpu": "h100"})]
    unknown = kueue.decide(gang(), admitted, {})
    assert unknown.placement is None and unknown.note is not None
    step = kueue.decide(gang(), admitted, {"h100": H100})
    assert step.note is None
    assert step.placement == H100
    assert step.flavors == ("h100",)


def test_quota_reserved_without_admitted_is_still_waiting() -> None:
    reserved = {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"}
    waiting = {"type": "Admitted", "status": "False", "reason": "Pending", "message": "admission checks pending"}
    step = kueue.decide(gang(), [workload(conditions=[reserved, waiting], flavors={"nvidia.com/gpu": "h100"})], {})
    assert step.note is not None and "admission checks pending" in step.note.message


@pytest.mark.parametrize(
    ("pod_spec", "ops"),
    [
        ({}, [{"op": "add", "path": "/spec/nodeSelector", "value": {"cloud.google.com/gke-accelerator": "h100"}},
              {"op": "add", "path": "/spec/tolerations", "value": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}]),
        ({"nodeSelector": {"a": "b"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
         [{"op": "add", "path": "/spec/nodeSelector/cloud.google.com~1gke-accelerator", "value": "h100"}]),
    ],
    ids=["bare-pod", "pod-with-selector-and-the-toleration"],
)  # fmt: skip
def test_placement_ops(pod_spec: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    assert kueue.placement_ops(pod_spec, H100) == ops


def test_queued_job_gets_gated_pods_and_kueues_reason_in_status() -> None:
    s = spec(**GPU_SPEC)
    plan = reconcile(job(s), [], False, T0, AdmissionNote("Pending", "waiting for Kueue: insufficient quota"))
    pods = [m for m in plan.create if m["kind"] == "Pod"]
    assert len(pods) == 2 and all(p["spec"]["schedulingGates"] for p in pods)
    admitted = cond.get(plan.status, cond.ADMITTED)
    assert admitted is not None and admitted.status == "False"
    assert (admitted.reason, admitted.message) == ("Pending", "waiting for Kueue: insufficient quota")
    assert plan.status.state == "Queued"


def test_queued_job_is_admitted_by_kueue_once_its_pods_are_ungated() -> None:
    s = spec(**GPU_SPEC)
    plan = reconcile(job(s, TrainingJobStatus(attempt=1)), [pod(0), pod(1)], True, T0)
    admitted = cond.get(plan.status, cond.ADMITTED)
    assert admitted is not None and (admitted.status, admitted.reason) == ("True", "AdmittedByKueue")


def test_a_running_gang_is_reported_ready_to_kueue_once() -> None:
    admitted = workload(conditions=ADMITTED, flavors={"nvidia.com/gpu": "h100"})
    assert kueue.decide(gang(), [admitted], {"h100": H100}, running=True).report_ready == "j-a1"
    assert kueue.decide(gang(), [admitted], {"h100": H100}, running=False).report_ready is None
    ready = {"type": "PodsReady", "status": "True", "reason": "PodsReady", "message": "ok"}
    reported = workload(conditions=[*ADMITTED, ready], flavors={"nvidia.com/gpu": "h100"})
    assert kueue.decide(gang(), [reported], {"h100": H100}, running=True).report_ready is None
    body = kueue.pods_ready_apply("team-a", "j-a1", 2, "2026-01-01T00:00:00Z")
    assert body["status"]["conditions"][0]["type"] == "PodsReady" and body["metadata"]["name"] == "j-a1"


def test_a_dispatched_workload_is_reported_ready_once_the_copied_status_says_running() -> None:
    def on_manager(*extra: dict[str, Any]) -> kueue.WorkloadView:
        return workload(conditions=[*ADMITTED, *extra], flavors={"nvidia.com/gpu": "h100"})

    assert kueue.dispatched_ready(on_manager(), "Running")
    assert not kueue.dispatched_ready(on_manager(), "Queued") and not kueue.dispatched_ready(on_manager(), None)
    ready = {"type": "PodsReady", "status": "True", "reason": "PodsReady", "message": "ok"}
    assert not kueue.dispatched_ready(on_manager(ready), "Running")
    assert not kueue.dispatched_ready(workload(conditions=[PENDING]), "Running")
    gone = {"type": "Evicted", "status": "True", "reason": "PodsReadyTimeout", "message": "late"}
    assert not kueue.dispatched_ready(on_manager(gone), "Running")


# --- eviction by Kueue: preemption and waitForPodsReady --------------------------------------------

PREEMPTED_MSG = (
    "Preempted to accommodate a workload (UID: 1111, JobUID: 2222-ab) due to prioritization in the ClusterQueue; "
    "preemptor path: /cq; preemptee path: /cq"
)


def evicted(reason: str = "Preempted", message: str = PREEMPTED_MSG) -> list[dict[str, Any]]:
    return [*ADMITTED, {"type": "Evicted", "status": "True", "reason": reason, "message": message}]


def test_an_evicted_workload_of_the_current_attempt_is_an_eviction_with_kueues_words() -> None:
    step = kueue.decide(gang(), [workload(conditions=evicted(), flavors={"nvidia.com/gpu": "h100"})], {"h100": H100})
    assert step.evicted == kueue.KueueEviction(1, "j-a1", "Preempted", PREEMPTED_MSG)
    assert step.evicted.preempted and step.evicted.preemptor_uid() == "2222-ab"
    assert step.placement is None and step.delete == [] and step.create is None


def test_preemptor_unknown_to_kueue_is_none() -> None:
    ev = kueue.KueueEviction(1, "j-a1", "Preempted", PREEMPTED_MSG.replace("2222-ab", "UNKNOWN"))
    assert ev.preemptor_uid() is None


@pytest.mark.parametrize(
    ("live", "delete"), [(frozenset({1}), []), (frozenset(), ["j-a1"])], ids=["pods-still-saving", "pods-gone"]
)
def test_an_evicted_older_attempts_workload_keeps_its_quota_until_its_pods_are_gone(
    live: frozenset[int], delete: list[str]
) -> None:
    old = workload(conditions=evicted(), flavors={"nvidia.com/gpu": "h100"})
    step = kueue.decide(gang(attempt=2), [old], {"h100": H100}, live_attempts=live)
    assert step.delete == delete
    assert step.create is not None and step.create["metadata"]["name"] == "j-a2"  # the next attempt queues
    assert step.evicted is None


def test_workload_carries_the_job_uid_kueue_names_preemptors_by() -> None:
    assert kueue.build_workload(gang())["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == "uid"


def running_status(restarts: int = 0, step: int | None = 30) -> TrainingJobStatus:
    from phalanx.api.models import CheckpointStatus

    s = TrainingJobStatus(attempt=1, restarts=restarts)
    if step is not None:
        s.last_checkpoint = CheckpointStatus(step=step, time="2026-01-01T00:00:00Z")
    return s


def test_preemption_stops_the_gang_and_starts_the_next_attempt_without_a_restart_counted() -> None:
    s = spec(**GPU_SPEC, runPolicy={"backoffLimit": 0})
    ev = kueue.KueueEviction(1, "j-a1", "Preempted", PREEMPTED_MSG)
    note = AdmissionNote("Preempted", PREEMPTED_MSG, eviction=ev, preemptor="team-b/urgent")
    plan = reconcile(job(s, running_status()), [pod(0), pod(1)], True, T0, note)
    assert plan.status.attempt == 2 and plan.status.restarts == 0  # backoffLimit 0 and still not Failed
    assert sorted(r.name for r in plan.delete_pods) == ["j-a1-worker-0", "j-a1-worker-1"]
    assert plan.force_delete_pods == []  # gracefully: the trainers save a checkpoint on SIGTERM
    restarting = cond.get(plan.status, cond.RESTARTING)
    assert restarting is not None and (restarting.status, restarting.reason) == ("True", "Preempted")
    assert "for TrainingJob team-b/urgent" in restarting.message
    assert PREEMPTED_MSG in restarting.message
    assert "last committed checkpoint: step 30" in restarting.message
    assert "not counted against backoffLimit" in restarting.message
    assert not plan.create  # the next attempt's pods wait until the old ones are gone


def test_a_stale_eviction_note_does_not_restart_the_next_attempt_again() -> None:
    s = spec(**GPU_SPEC)
    ev = kueue.KueueEviction(1, "j-a1", "Preempted", PREEMPTED_MSG)
    plan = reconcile(job(s, TrainingJobStatus(attempt=2)), [], True, T0, AdmissionNote("Preempted", "", eviction=ev))
    assert plan.status.attempt == 2
    assert len([m for m in plan.create if m["kind"] == "Pod"]) == 2  # attempt 2's pods, gated, created


@pytest.mark.parametrize(("restarts", "failed"), [(0, False), (3, True)], ids=["restarts-left", "limit-used"])
def test_a_readiness_timeout_is_a_restart_counted_against_backoff_limit(restarts: int, failed: bool) -> None:
    s = spec(**GPU_SPEC, runPolicy={"backoffLimit": 3})
    msg = "Exceeded the PodsReady timeout team-a/j-a1"
    ev = kueue.KueueEviction(1, "j-a1", "PodsReadyTimeout", msg)
    plan = reconcile(job(s, running_status(restarts)), [pod(0), pod(1)], True, T0,
                     AdmissionNote("PodsReadyTimeout", msg, eviction=ev))  # fmt: skip
    if failed:
        c = cond.get(plan.status, cond.FAILED)
        assert c is not None and c.reason == "BackoffLimitExceeded" and msg in c.message
        return
    assert (plan.status.attempt, plan.status.restarts) == (2, 1)
    restarting = cond.get(plan.status, cond.RESTARTING)
    assert restarting is not None and restarting.reason == "PodsReadyTimeout"
    assert msg in restarting.message and "last committed checkpoint: step 30" in restarting.message


def test_workload_gets_the_priority_of_the_jobs_priority_class() -> None:
    wl = kueue.build_workload(gang(), kueue.WorkloadPriority.pod_class("hi", 1000))
    assert wl["spec"]["priority"] == 1000
    assert wl["spec"]["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "hi"}
    assert "priority" not in kueue.build_workload(gang())["spec"]  # no class named: Kueue's default


def test_workload_gets_the_priority_of_a_workload_priority_class() -> None:
    step = kueue.decide(gang(), [], {}, priority=kueue.WorkloadPriority.workload_class("urgent", 5000))
    assert step.create is not None
    assert step.create["spec"]["priority"] == 5000
    ref = {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "urgent"}
    assert step.create["spec"]["priorityClassRef"] == ref


def test_a_missing_workload_priority_class_is_named_and_no_workload_is_made() -> None:
    step = kueue.decide(gang(), [], {}, missing_class="urgent")
    assert step.create is None
    assert step.note is not None and step.note.reason == "WorkloadPriorityClassNotFound"
    assert "WorkloadPriorityClass urgent (label kueue.x-k8s.io/priority-class) does not exist" in step.note.message


def test_multikueue_copy_uses_its_prebuilt_workload_for_every_attempt() -> None:
    # On a worker cluster the job is MultiKueue's copy: the Workload j-a1 came with it. A gang restart
    # (attempt 2) neither makes j-a2 nor deletes j-a1, whose admission the manager cluster watches.
    current = workload("j-a1", attempt=1, conditions=ADMITTED, flavors={"nvidia.com/gpu": "h100"})
    step = kueue.decide(gang(attempt=2), [current], {"h100": H100}, live_attempts=frozenset({2}), prebuilt="j-a1")
    assert (step.create, step.delete, step.note) == (None, [], None)
    assert step.placement is not None and step.placement.node_labels == H100.node_labels
    waiting = kueue.decide(gang(), [], {}, prebuilt="j-a1")
    assert waiting.create is None and waiting.note is not None and "MultiKueue's Workload j-a1" in waiting.note.message


def test_multikueue_copy_marks_its_workload_finished_instead_of_deleting_it() -> None:
    current = workload("j-a1", attempt=1, conditions=ADMITTED, flavors={"nvidia.com/gpu": "h100"})
    step = kueue.decide(gang(), [current], {}, finished=True, completed=True, prebuilt="j-a1")
    assert (step.delete, step.finish) == ([], "j-a1")
    suspended = kueue.decide(gang(), [current], {}, finished=True, completed=False, prebuilt="j-a1")
    assert (suspended.delete, suspended.finish) == ([], None)
    done = workload("j-a1", conditions=[*ADMITTED, {"type": "Finished", "status": "True", "reason": "Succeeded"}])
    assert kueue.decide(gang(), [done], {}, finished=True, completed=True, prebuilt="j-a1").finish is None
    applied = kueue.finished_apply("ns", "j-a1", False, "rank 1 exited 1", "2026-01-01T00:00:00Z")
    assert applied["status"]["conditions"][0] == {
        "type": "Finished", "status": "True", "reason": "Failed", "message": "rank 1 exited 1",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }  # fmt: skip


def test_the_prebuilt_workload_is_read_as_kueue_reads_it() -> None:
    key = "kueue.x-k8s.io/prebuilt-workload-name"
    assert kueue.prebuilt_workload({}, {key: "j-a1"}) == "j-a1"  # Kueue 0.19: an annotation
    assert kueue.prebuilt_workload({key: "old"}, {key: "j-a1"}) == "j-a1"  # the annotation first
    assert kueue.prebuilt_workload({key: "j-a1"}, {}) == "j-a1"  # older Kueue: a label
    assert kueue.prebuilt_workload({}, {}) is None
