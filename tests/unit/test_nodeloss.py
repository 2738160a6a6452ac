"""Node loss, pure: which pods are lost (tables), and what the reconcile makes of it (NodeLost restarts,
force deletes with the pod's UID, the grace, restartOn and backoffLimit)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from phalanx.api.models import TrainingJobStatus
from phalanx.controller.caches import node_health
from phalanx.core import conditions as cond
from phalanx.core.model import JobView, PodView
from phalanx.core.nodeloss import NodeHealth, node_loss
from phalanx.core.reconcile import reconcile
from tests.unit.specs import T0, job, pod, spec

READY = NodeHealth("n1", ready=True, since=T0 - timedelta(hours=1), reason="KubeletReady")


def unknown_since(seconds: float) -> NodeHealth:
    return NodeHealth("n1", ready=False, since=T0 - timedelta(seconds=seconds), reason="NodeStatusUnknown")


@pytest.mark.parametrize(
    ("health", "phase", "lost", "recheck"),
    [
        (READY, "Running", False, None),
        (None, "Running", True, None),  # deleted: lost at once
        (None, "Pending", True, None),  # bound, not yet running: lost as well
        (None, "Succeeded", False, None),  # finished: its outcome is known, nothing is lost
        (None, "Failed", False, None),
        (unknown_since(39), "Running", False, 1.0),  # within the grace: look again when it ends
        (unknown_since(40), "Running", True, None),
        (unknown_since(300), "Running", True, None),
        (NodeHealth("n1", ready=False, since=None), "Running", False, None),  # never reported: no time
    ],
)
def test_which_pods_are_lost(health: NodeHealth | None, phase: str, lost: bool, recheck: float | None) -> None:
    loss = node_loss([pod(0, phase=phase)], {"n1": health}, 40, T0)
    assert bool(loss.lost) is lost
    assert loss.recheck_after == (pytest.approx(recheck) if recheck is not None else None)


def test_nodes_not_in_the_map_and_unbound_pods_are_not_judged() -> None:
    pods = [pod(0), PodView(name="j-a1-worker-1", index=1, attempt=1, phase="Pending", gated=True)]
    assert node_loss(pods, {}, 40, T0).lost == []


def test_describe_names_each_node_and_its_pods() -> None:
    pods = [pod(i, node="gpu-1") for i in range(5)] + [pod(5, node="gpu-2")]
    health = {"gpu-1": None, "gpu-2": NodeHealth("gpu-2", ready=False, since=T0 - timedelta(seconds=50))}
    text = node_loss(pods, health, 40, T0).describe()
    assert text == (
        "node gpu-1 was deleted under pods j-a1-worker-0, j-a1-worker-1, j-a1-worker-2 and 2 more; "
        "node gpu-2 has been NotReady for 50 s (NotReady) under pod j-a1-worker-5"
    )


def running_job(**run_policy: object) -> tuple[JobView, list[PodView]]:
    s = TrainingJobStatus(attempt=1)
    first = reconcile(job(spec(replicas=3, runPolicy=run_policy), s), [pod(i, replicas=3) for i in range(3)], True, T0)
    pods = [pod(0, replicas=3, node="n1", uid="u0"), pod(1, replicas=3, node="gone", uid="u1"), pod(2, replicas=3)]
    return job(spec(replicas=3, runPolicy=run_policy), first.status), pods


def test_deleted_node_restarts_the_gang_as_node_lost_and_force_deletes_its_pods() -> None:
    j, pods = running_job()
    plan = reconcile(j, pods, True, T0, nodes={"n1": READY, "gone": None})
    s = plan.status
    assert s.attempt == 2 and s.restarts == 1 and s.state == "Restarting"
    restarting = cond.get(s, cond.RESTARTING)
    assert restarting is not None and restarting.reason == "NodeLost"
    assert restarting.message.startswith("node gone was deleted under pod j-a1-worker-1; restarting all 3 pods")
    assert plan.force_delete_pods == [("j-a1-worker-1", "u1")]
    # The healthy ranks go gracefully.
    assert sorted(p.name for p in plan.delete_pods) == ["j-a1-worker-0", "j-a1-worker-2"]
    assert [e.reason for e in plan.events] == ["NodeLost"]
    assert not plan.create  # the gang barrier: the new attempt waits for the old pods to go


def test_not_ready_within_grace_keeps_the_gang_and_looks_again_at_the_end_of_it() -> None:
    j, pods = running_job(nodeLostGraceSeconds=60)
    plan = reconcile(j, pods, True, T0, nodes={"n1": READY, "gone": unknown_since(45)})
    assert plan.status.attempt == 1 and not plan.status_changed
    assert not plan.force_delete_pods and not plan.delete_pods
    assert plan.requeue_after == pytest.approx(15)
    later = reconcile(j, pods, True, T0 + timedelta(seconds=15), nodes={"gone": unknown_since(45)})
    assert later.status.attempt == 2 and later.force_delete_pods == [("j-a1-worker-1", "u1")]
    c = cond.get(later.status, cond.RESTARTING)
    assert c is not None and c.reason == "NodeLost" and "has been NotReady for 60 s (NodeStatusUnknown)" in c.message


def test_node_loss_goes_before_the_peers_crash_it_caused() -> None:
    j, pods = running_job()
    crashed = pod(2, replicas=3, phase="Failed", exit_code=1, finished_at="2026-01-01T00:00:00Z")
    plan = reconcile(j, [*pods[:2], crashed], True, T0, nodes={"n1": READY, "gone": None})
    c = cond.get(plan.status, cond.RESTARTING)
    assert plan.status.attempt == 2 and c is not None and c.reason == "NodeLost"


def test_restart_on_never_fails_with_node_lost() -> None:
    j, pods = running_job(restartOn="never")
    plan = reconcile(j, pods, True, T0, nodes={"gone": None})
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "NodeLost" and "node gone was deleted" in failed.message
    assert plan.force_delete_pods == [("j-a1-worker-1", "u1")]
    assert "j-a1-worker-1" not in [p.name for p in plan.delete_pods]


def test_node_loss_counts_against_the_backoff_limit() -> None:
    j, pods = running_job(backoffLimit=0)
    plan = reconcile(j, pods, True, T0, nodes={"gone": None})
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "BackoffLimitExceeded" and "node gone" in failed.message


def test_lost_pods_of_an_old_attempt_are_force_deleted_so_the_barrier_does_not_wait() -> None:
    s = TrainingJobStatus(attempt=2)
    stuck = pod(1, attempt=1, node="gone", uid="old", terminating=True)
    plan = reconcile(job(spec(), s), [stuck], True, T0, nodes={"gone": None})
    assert plan.force_delete_pods == [("j-a1-worker-1", "old")] and not plan.delete_pods
    assert plan.status.attempt == 2  # no new restart for an attempt already left


def test_a_job_being_deleted_still_force_deletes_its_lost_pods() -> None:
    plan = reconcile(
        job(spec(), TrainingJobStatus(attempt=1), deleting=True),
        [pod(0, node="gone", uid="u")],
        True,
        T0,
        nodes={"gone": None},
    )
    assert plan.force_delete_pods == [("j-a1-worker-0", "u")]


def test_without_node_information_nothing_is_lost() -> None:
    j, pods = running_job()
    plan = reconcile(j, pods, True, T0)
    assert plan.status.attempt == 1 and not plan.force_delete_pods


def test_node_health_reads_the_ready_condition_only() -> None:
    body = {
        "metadata": {"name": "n"},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {
                    "type": "Ready",
                    "status": "Unknown",
                    "reason": "NodeStatusUnknown",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "lastHeartbeatTime": "2026-01-01T00:05:00Z",
                },
            ]
        },
    }
    assert node_health(body) == NodeHealth("n", ready=False, since=T0, reason="NodeStatusUnknown")
    beat = {**body, "status": {"conditions": [{**body["status"]["conditions"][1], "lastHeartbeatTime": "x"}]}}
    assert node_health(beat) == node_health(body)  # a heartbeat is no change
    assert node_health({"metadata": {"name": "n"}}) == NodeHealth("n", ready=False)


def test_node_events_wake_only_the_jobs_on_a_node_that_is_lost_or_turns_not_ready() -> None:
    from phalanx.controller.caches import Caches
    from phalanx.controller.operator import Operator

    op = Operator(workers=1)
    on_n1 = {"view": pod(0, node="n1"), "owner": "u"}
    done_on_n1 = {"view": pod(0, node="n1", phase="Succeeded"), "owner": "u"}
    op.caches = Caches({"pod_index": {("ns", "a"): [on_n1], ("ns", "b"): [{"view": pod(0, node="n2"), "owner": "u"}],
                                      ("ns", "c"): [done_on_n1]}})  # fmt: skip
    woken: list[object] = []
    op.enqueue = woken.append  # type: ignore[method-assign]
    op.node_changed("n1", READY)
    assert woken == []  # a ready node loses no pod
    op.node_changed("n1", unknown_since(0))
    assert woken == [("ns", "a")]  # not b (another node), not c (its pod has finished)
    op.node_changed("n1", unknown_since(0))
    assert woken == [("ns", "a")]  # a heartbeat of the same NotReady node: nothing new
    op.node_changed("n1", None)
    assert woken == [("ns", "a"), ("ns", "a")]  # deleted
