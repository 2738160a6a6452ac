"""In-place gang restart (runPolicy.restartMode InPlace; core/inplace.py, core/pods.py, core/reconcile.py):
the pods a failure restart keeps, the failures only lastState shows, and the fallbacks to recreation."""

from __future__ import annotations

from datetime import timedelta

from phalanx import contract
from phalanx.api.models import TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core import inplace
from phalanx.core.gang import Gang
from phalanx.core.model import Plan
from phalanx.core.observe import format_time, pod_view
from phalanx.core.pods import build_pod
from phalanx.core.reconcile import reconcile
from tests.unit.specs import NS, T0, job, pod, refs, spec

IN_PLACE = {"runPolicy": {"restartMode": "InPlace"}}
STARTED = format_time(T0)  # attempt 1 began at T0
LATER = T0 + timedelta(seconds=20)


def in_place_job(attempt: int = 1, restarts: int = 0, **status: object) -> object:
    return job(spec(**IN_PLACE), TrainingJobStatus(attempt=attempt, restarts=restarts, attempt_start_time=STARTED,
                                                   **status))  # fmt: skip


def killed(index: int, code: int = 137, began: str = STARTED, **kw: object) -> object:
    """A pod whose trainer run (begun at `began`) exited `code`: the kubelet is restarting it in place."""
    return pod(index, exit_code=code, reason="Error", started_at=began,
               finished_at=format_time(T0 + timedelta(seconds=5)), **kw)  # fmt: skip


def restart_plan() -> Plan:
    pods = [pod(0, started_at=STARTED), killed(1)]
    return reconcile(in_place_job(), pods, True, LATER)  # type: ignore[arg-type]


def test_in_place_pods_restart_all_containers_on_any_failed_exit_and_read_the_attempt_from_their_label() -> None:
    manifest = build_pod(Gang("j", NS, "uid", spec(**IN_PLACE), 3), 0)
    trainer = manifest["spec"]["containers"][0]
    assert trainer["restartPolicy"] == "Never"
    assert trainer["restartPolicyRules"] == [
        {"action": "RestartAllContainers", "exitCodes": {"operator": "NotIn", "values": [0]}}
    ]
    label = {"fieldRef": {"fieldPath": "metadata.labels['phalanx.dev/attempt']"}}
    env = {e["name"]: e for e in trainer["env"]}
    assert env[contract.ATTEMPT] == {"name": contract.ATTEMPT, "valueFrom": label}
    assert env[contract.ATTEMPT_FILE]["value"] == "/etc/phalanx/pod/attempt"
    volume = next(v for v in manifest["spec"]["volumes"] if v["name"] == "phalanx-pod-info")
    assert volume["downwardAPI"]["items"] == [{"path": "attempt", **label}]
    assert {"name": "phalanx-pod-info", "mountPath": "/etc/phalanx/pod", "readOnly": True} in trainer["volumeMounts"]
    assert manifest["metadata"]["labels"]["phalanx.dev/attempt"] == "3"
    # Recreate (the default) keeps the literal attempt and no rule.
    default = build_pod(Gang("j", NS, "uid", spec(), 3), 0)["spec"]["containers"][0]
    assert "restartPolicyRules" not in default and contract.ATTEMPT_FILE not in {e["name"] for e in default["env"]}


def test_the_run_that_ended_is_read_while_the_kubelet_restarts_the_pod() -> None:
    """What the kubelet reports for about two seconds after the trainer's exit (measured on the real node);
    afterwards lastState says RestartingAllContainers, exit 137, for every container whatever the cause."""
    view = pod_view({
        "metadata": {"name": "j-a1-worker-0", "labels": {"phalanx.dev/attempt": "1", "phalanx.dev/replica-index": "0"}},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "trainer", "restartCount": 1,
            "state": {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": "2026-01-01T00:00:02Z",
                                     "finishedAt": "2026-01-01T00:00:05Z"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "RestartingAllContainers"}},
        }], "conditions": [{"type": "AllContainersRestarting", "status": "True"}]},
    })  # fmt: skip
    assert (view.phase, view.exit_code, view.started_at) == ("Running", 137, "2026-01-01T00:00:02Z")
    failed = inplace.failed_run(view, STARTED)
    assert failed is not None and failed.phase == "Failed" and failed.finished_at == "2026-01-01T00:00:05Z"
    running = pod_view({"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "trainer", "state": {"running": {"startedAt": "2026-01-01T00:00:06Z"}},
         "lastState": {"terminated": {"exitCode": 137, "reason": "RestartingAllContainers"}}}]}})  # fmt: skip
    assert running.started_at == "2026-01-01T00:00:06Z" and inplace.failed_run(running, STARTED) is None


def test_a_failure_restarted_in_place_moves_the_whole_gang_to_the_next_attempt_without_deleting_a_pod() -> None:
    plan = restart_plan()
    s = plan.status
    assert (s.attempt, s.restarts, s.attempt_start_time) == (2, 1, format_time(LATER))
    assert plan.delete_pods == [] and plan.create == []
    assert plan.relabel_pods == refs(0, 1)
    restarting = cond.get(s, cond.RESTARTING)
    assert restarting is not None and restarting.reason == "GangRestart"
    assert "pod j-a1-worker-1 exited with code 137 (Error)" in restarting.message


def test_pods_that_cannot_restart_in_place_are_recreated() -> None:
    pods = [pod(0, phase="Failed", exit_code=137), pod(1, started_at=STARTED), pod(2, terminating=True)]
    plan = reconcile(in_place_job(), pods, True, LATER)  # type: ignore[arg-type]
    assert plan.status.attempt == 2
    assert plan.relabel_pods == refs(1) and plan.delete_pods == refs(0)  # the terminating one goes by itself
    # A pod of another gang size (a rescale) is never moved in place.
    assert not inplace.restartable(pod(0, replicas=3), spec(**IN_PLACE), set())


def test_old_attempt_pods_left_after_a_crash_are_moved_by_the_next_reconcile() -> None:
    """The status said attempt 2 (a failure restart) but the operator died before relabelling."""
    status = restart_plan().status
    plan = reconcile(job(spec(**IN_PLACE), status), [pod(0, started_at=STARTED), killed(1)], True, LATER)
    assert plan.relabel_pods == refs(0, 1) and plan.delete_pods == [] and plan.status.attempt == 2


def test_the_exit_for_a_requested_restart_and_runs_of_the_old_attempt_are_not_failures() -> None:
    status = restart_plan().status  # attempt 2 began at LATER
    asked = killed(0, code=contract.EXIT_RESTART_IN_PLACE, began=format_time(LATER), attempt=2)
    old_crash = killed(1, code=1, attempt=2)  # a peer's crash on the broken collective, begun in attempt 1
    plan = reconcile(job(spec(**IN_PLACE), status), [asked, old_crash], True, LATER + timedelta(seconds=2))
    assert plan.status.attempt == 2 and plan.status.restarts == 1 and cond.get(plan.status, cond.FAILED) is None
    assert plan.delete_pods == [] and plan.relabel_pods == []


def test_a_program_error_in_the_new_attempt_fails_the_job() -> None:
    status = restart_plan().status
    broken = killed(0, code=1, began=format_time(LATER + timedelta(seconds=1)), attempt=2)
    plan = reconcile(job(spec(**IN_PLACE), status), [broken, pod(1, attempt=2)], True, LATER + timedelta(seconds=3))
    failed = cond.get(plan.status, cond.FAILED)
    assert failed is not None and failed.reason == "PodFailed" and "j-a2-worker-0 exited with code 1" in failed.message


def test_the_gang_runs_only_once_every_trainer_restarted_in_the_new_attempt() -> None:
    status = restart_plan().status
    restarted, old = pod(0, attempt=2, started_at=format_time(LATER)), pod(1, attempt=2, started_at=STARTED)
    plan = reconcile(job(spec(**IN_PLACE), status), [restarted, old], True, LATER + timedelta(seconds=1))
    assert not cond.is_true(plan.status, cond.RUNNING) and plan.requeue_after is not None
    both = [restarted, pod(1, attempt=2, started_at=format_time(LATER + timedelta(seconds=1)))]
    plan = reconcile(job(spec(**IN_PLACE), status), both, True, LATER + timedelta(seconds=2))
    assert cond.is_true(plan.status, cond.RUNNING)


def test_a_trainer_that_does_not_restart_in_time_gets_the_gang_recreated_without_counting_a_failure() -> None:
    status = restart_plan().status
    stuck = pod(1, attempt=2, started_at=STARTED)  # it never read the attempt file (or hangs)
    pods = [pod(0, attempt=2, started_at=format_time(LATER)), stuck]
    late = LATER + timedelta(seconds=inplace.RESTART_TIMEOUT_SECONDS + 1)
    plan = reconcile(job(spec(**IN_PLACE), status), pods, True, late)
    assert (plan.status.attempt, plan.status.restarts) == (3, 1)
    assert sorted(plan.delete_pods) == refs(0, 1, attempt=2) and plan.relabel_pods == []
    restarting = cond.get(plan.status, cond.RESTARTING)
    assert restarting is not None and restarting.reason == inplace.TIMEOUT and "j-a2-worker-1" in restarting.message
    # The next attempt is recreated: its stale pods are deleted, not moved.
    plan = reconcile(job(spec(**IN_PLACE), plan.status), pods, True, late)
    assert plan.relabel_pods == [] and sorted(plan.delete_pods) == refs(0, 1, attempt=2)


def test_a_job_kueue_queues_always_recreates() -> None:
    queued = spec(runPolicy={"restartMode": "InPlace"}, scheduling={"queueName": "team-a"})
    status = TrainingJobStatus(attempt=1, attempt_start_time=STARTED)
    plan = reconcile(job(queued, status), [pod(0, started_at=STARTED), killed(1)], True, LATER)
    assert plan.status.attempt == 2 and plan.relabel_pods == [] and sorted(plan.delete_pods) == refs(0, 1)
