"""Native gang scheduling (core/podgroup.py): the Workload and PodGroup per attempt, the pods that name it,
and what the reconcile makes of it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from phalanx.api.models import RestartMode, TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core import podgroup
from phalanx.core.gang import Gang
from phalanx.core.pods import build_pod, gated, held
from phalanx.core.reconcile import AdmissionNote, reconcile
from tests.unit.specs import NS, T0, job, pod, spec

NATIVE = {"scheduling": {"gangBackend": "PodGroup"}}


def gang(attempt: int = 1, replicas: int = 3, name: str = "j", **extra: Any) -> Gang:
    return Gang(name, NS, "uid", spec(replicas=replicas, **{**NATIVE, **extra}), attempt)


def view(
    name: str, attempt: int, scheduled: dict[str, str] | None = None, deleting: bool = False
) -> podgroup.GroupView:
    meta: dict[str, Any] = {"name": name, "labels": {"phalanx.dev/attempt": str(attempt)}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"conditions": [{"type": "PodGroupScheduled", **scheduled}]} if scheduled else {}
    return podgroup.group_view({"metadata": meta, "status": status})


def test_gates_stay_the_default_backend() -> None:
    g = Gang("j", NS, "uid", spec(), 1)
    assert not podgroup.uses_pod_group(g) and gated(g) and held(g)
    assert "schedulingGroup" not in build_pod(g, 0)["spec"]


def test_workload_holds_the_gang_policy_with_min_count_replicas_owned_by_the_job() -> None:
    wl = podgroup.build_workload(gang(attempt=2, replicas=3))
    assert wl["apiVersion"] == "scheduling.k8s.io/v1alpha2" and wl["kind"] == "Workload"
    assert wl["metadata"]["name"] == "j-a2"
    assert wl["metadata"]["labels"] == {"phalanx.dev/job-name": "j", "app.kubernetes.io/managed-by": "phalanx",
                                        "phalanx.dev/attempt": "2"}  # fmt: skip
    (owner,) = wl["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("TrainingJob", "j", "uid", True)
    assert wl["spec"]["controllerRef"] == {"apiGroup": "phalanx.dev", "kind": "TrainingJob", "name": "j"}
    assert wl["spec"]["podGroupTemplates"] == [{"name": "trainers", "schedulingPolicy": {"gang": {"minCount": 3}}}]


def test_pod_group_is_made_from_the_workload_template_with_the_same_policy() -> None:
    pg = podgroup.build_pod_group(gang(attempt=2, replicas=5))
    assert pg["kind"] == "PodGroup" and pg["metadata"]["name"] == "j-a2"
    assert pg["metadata"]["ownerReferences"][0]["uid"] == "uid"
    assert pg["spec"] == {
        "podGroupTemplateRef": {"workload": {"workloadName": "j-a2", "podGroupTemplateName": "trainers"}},
        "schedulingPolicy": {"gang": {"minCount": 5}},
    }


def test_names_are_per_attempt_and_fit_a_dns_label() -> None:
    long = "x" * 60
    assert podgroup.group_name("j", 1) != podgroup.group_name("j", 2)
    name = podgroup.group_name(long, 123)
    assert len(name) <= 63 and name.endswith("-a123")


def test_pods_name_their_attempts_pod_group_and_carry_no_gate_of_ours() -> None:
    g = gang(attempt=4)
    assert podgroup.uses_pod_group(g) and not gated(g) and not held(g)
    for i in range(g.replicas):
        p = build_pod(g, i)["spec"]
        assert p["schedulingGroup"] == {"podGroupName": "j-a4"}
        assert "schedulingGates" not in p


@pytest.mark.parametrize(
    "scheduling",
    [
        {"gangBackend": "PodGroup", "queueName": "team"},
        {"gangBackend": "PodGroup", "schedulerName": "volcano"},
        {"gangBackend": "PodGroup", "gang": False},
    ],
)
def test_pod_group_with_another_admission_system_is_never_half_admitted(scheduling: dict[str, Any]) -> None:
    """The CRD refuses these (tests/operator/test_schema_validation.py); a job from before the rules still
    gets exactly one admission system, never the PodGroup next to Kueue or a custom scheduler."""
    g = Gang("j", NS, "uid", spec(scheduling=scheduling), 1)
    assert not podgroup.uses_pod_group(g)
    assert "schedulingGroup" not in build_pod(g, 0)["spec"]


def test_unknown_backend_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError):
        spec(scheduling={"gangBackend": "Volcano"})


def test_first_pass_creates_the_workload_before_the_pod_group_and_no_pods_yet() -> None:
    step = podgroup.decide(gang(), [], [])
    assert [m["kind"] for m in step.create] == ["Workload", "PodGroup"]
    assert not step.ready and step.note is not None and step.note.reason == "WaitingForPodGroup"


def test_a_missing_pod_group_is_made_again_next_to_its_workload() -> None:
    step = podgroup.decide(gang(), [view("j-a1", 1)], [])
    assert [m["kind"] for m in step.create] == ["PodGroup"] and not step.ready


def test_existing_pod_group_makes_the_attempt_ready_and_says_the_schedulers_verdict() -> None:
    step = podgroup.decide(gang(), [view("j-a1", 1)], [view("j-a1", 1)])
    assert step.ready and not step.create and step.note is not None and step.note.reason == "WaitingForScheduler"
    held_back = {"status": "False", "reason": "Unschedulable", "message": "0/7 nodes are available: 4 Insufficient"}
    step = podgroup.decide(gang(), [view("j-a1", 1)], [view("j-a1", 1, held_back)])
    assert step.ready and step.note is not None and step.note.reason == "Unschedulable"
    assert "0/7 nodes are available" in step.note.message and "all or none" in step.note.message
    placed = {"status": "True", "reason": "Scheduled", "message": ""}
    step = podgroup.decide(gang(), [view("j-a1", 1)], [view("j-a1", 1, placed)])
    assert step.note is not None and step.note.reason == "AdmittedByPodGroup"


def test_older_attempts_objects_go_once_their_pods_have_stopped() -> None:
    g = gang(attempt=2)
    old = [view("j-a1", 1)], [view("j-a1", 1)]
    step = podgroup.decide(g, *old, live_attempts=frozenset({1}))
    assert not step.delete_pod_groups and not step.delete_workloads  # attempt 1's pods still terminate
    assert [m["metadata"]["name"] for m in step.create] == ["j-a2", "j-a2"]
    step = podgroup.decide(g, [view("j-a1", 1), view("j-a2", 2)], [view("j-a1", 1), view("j-a2", 2)])
    assert step.delete_pod_groups == ["j-a1"] and step.delete_workloads == ["j-a1"] and step.ready


def test_a_finished_job_deletes_every_object_and_creates_none() -> None:
    step = podgroup.decide(gang(), [view("j-a1", 1)], [view("j-a1", 1)], finished=True)
    assert step.delete_pod_groups == ["j-a1"] and step.delete_workloads == ["j-a1"] and not step.create


def test_a_leftover_being_deleted_is_waited_for_not_reused() -> None:
    step = podgroup.decide(gang(), [view("j-a1", 1, deleting=True)], [])
    assert not step.create and not step.ready and not step.delete_workloads


def test_a_deleted_jobs_objects_of_the_same_name_are_never_adopted_nor_deleted_by_its_successor() -> None:
    def theirs(attempt: int) -> podgroup.GroupView:
        body = podgroup.build_pod_group(gang(attempt=attempt))
        body["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
        return podgroup.group_view(body)

    step = podgroup.decide(gang(), [theirs(1), theirs(2)], [theirs(1)])
    assert not step.ready and not step.create and step.note is not None and "j-a1" in step.note.message
    assert not step.delete_workloads and not step.delete_pod_groups  # the garbage collector's
    assert podgroup.group_view(podgroup.build_workload(gang())).owner_uid == "uid"


# -- the reconcile ---------------------------------------------------------------------------------


def test_reconcile_creates_no_pod_before_the_attempts_pod_group_exists() -> None:
    plan = reconcile(job(spec(replicas=3, **NATIVE)), [], service_exists=False, now=T0)
    assert [m["kind"] for m in plan.create] == ["Service"]
    c = cond.get(plan.status, cond.ADMITTED)
    assert c is not None and (c.status, c.reason) == ("False", "WaitingForPodGroup")
    assert plan.status.attempt == 1 and plan.status.state == "Queued"


def test_reconcile_creates_ungated_pods_naming_the_pod_group_once_it_exists() -> None:
    note = AdmissionNote("WaitingForScheduler", "PodGroup j-a1 exists", group_ready_attempt=1)
    plan = reconcile(job(spec(replicas=3, **NATIVE), TrainingJobStatus(attempt=1)), [], True, T0, note)
    pods = [m for m in plan.create if m["kind"] == "Pod"]
    assert len(pods) == 3
    assert all(p["spec"]["schedulingGroup"] == {"podGroupName": "j-a1"} for p in pods)
    assert not any("schedulingGates" in p["spec"] for p in pods)


def test_a_note_about_an_older_attempt_creates_no_pods_of_the_new_one() -> None:
    note = AdmissionNote("AdmittedByPodGroup", "placed", group_ready_attempt=1)
    plan = reconcile(job(spec(replicas=2, **NATIVE), TrainingJobStatus(attempt=2)), [], True, T0, note)
    assert not [m for m in plan.create if m["kind"] == "Pod"]


def test_admitted_by_pod_group_once_the_scheduler_bound_the_whole_gang() -> None:
    s = TrainingJobStatus(attempt=1)
    note = AdmissionNote("AdmittedByPodGroup", "placed", group_ready_attempt=1)
    unbound = [pod(0, phase="Pending", node=None), pod(1, phase="Pending", node=None)]
    plan = reconcile(job(spec(**NATIVE), s), unbound, True, T0, note)
    c = cond.get(plan.status, cond.ADMITTED)
    assert c is not None and (c.status, c.reason) == ("False", "WaitingForScheduler")
    plan = reconcile(job(spec(**NATIVE), s), [pod(0), pod(1)], True, T0, note)
    c = cond.get(plan.status, cond.ADMITTED)
    assert c is not None and (c.status, c.reason) == ("True", "AdmittedByPodGroup")
    assert "PodGroup j-a1" in c.message and plan.status.state == "Running"


def test_the_api_being_unavailable_keeps_the_job_queued_with_the_apiservers_words() -> None:
    note = AdmissionNote("PodGroupAPIUnavailable", "cannot read ...: the server could not find the requested resource")
    plan = reconcile(job(spec(**NATIVE), TrainingJobStatus(attempt=1)), [], True, T0, note)
    c = cond.get(plan.status, cond.ADMITTED)
    assert c is not None and (c.status, c.reason, c.message) == ("False", note.reason, note.message)
    assert plan.status.state == "Queued" and not plan.create
    assert not cond.is_true(plan.status, cond.FAILED)


def test_in_place_restart_falls_back_to_recreation_on_the_pod_group_backend() -> None:
    s = spec(replicas=2, runPolicy={"restartMode": RestartMode.IN_PLACE.value}, **NATIVE)
    failed = pod(1, phase="Failed", exit_code=137, reason="OOMKilled", finished_at="2026-01-01T00:00:00Z")
    plan = reconcile(job(s, TrainingJobStatus(attempt=1)), [pod(0), failed], True, T0)
    assert plan.status.attempt == 2
    assert not plan.relabel_pods and {r.name for r in plan.delete_pods} == {"j-a1-worker-0", "j-a1-worker-1"}
