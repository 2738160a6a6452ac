"""The health verdicts (core/health.py) as tables: hang, straggler (window, threshold, noise), unhealthy
GPU; and how the reconcile acts on them (restart reasons, backoffLimit, avoided nodes)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from phalanx.api.models import TrainingJobStatus
from phalanx.core import conditions as cond
from phalanx.core import health
from phalanx.core.gang import Gang
from phalanx.core.health import GangProgress, RankProgress
from phalanx.core.model import PodView
from phalanx.core.observe import devices_of
from phalanx.core.pods import build_pod
from phalanx.core.reconcile import reconcile
from phalanx.core.telemetry import JobTelemetry, PodSample, rank_step_seconds
from tests.unit.specs import NS, T0, job, pod, spec


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rank(
    index: int, step: int | None = 10, progressed: float | None = 0, answered: float | None = 0, **kw: object
) -> RankProgress:
    return RankProgress(
        pod=f"j-worker-{index}",
        index=index,
        node=f"node-{index}",
        step=step,
        progressed_at=None if progressed is None else at(progressed),
        answered_at=None if answered is None else at(answered),
        **kw,  # type: ignore[arg-type]
    )


# --- hang ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "ranks", "looks", "now", "hung"),
    [
        ("advancing", [rank(0, progressed=95, answered=99), rank(1, progressed=96, answered=99)], 0, 100, False),
        (
            "under the deadline",
            [rank(0, progressed=50, answered=99), rank(1, progressed=50, answered=99)],
            40,
            100,
            False,
        ),
        ("at the deadline", [rank(0, progressed=40, answered=99), rank(1, progressed=40, answered=99)], 50, 100, True),
        # Start-up: no rank has done a step in this attempt, however long it takes.
        (
            "start-up",
            [rank(0, step=0, progressed=None), rank(1, step=None, progressed=None, answered=None)],
            99,
            1e6,
            False,
        ),
        # One scrape round after the last advance is not enough evidence.
        ("one look", [rank(0, progressed=0, answered=99), rank(1, progressed=0, answered=99)], 1, 100, False),
        # No rank answers any more: still a hang (a stopped process does not answer).
        ("all silent", [rank(0, progressed=0, answered=0), rank(1, progressed=0, answered=0)], 60, 100, True),
    ],
)
def test_hang_table(case: str, ranks: list[RankProgress], looks: int, now: float, hung: bool) -> None:
    verdict = health.hang(GangProgress(attempt=1, ranks=tuple(ranks), looks_since_progress=looks), 60, at(now))
    assert (verdict is not None) is hung, case


def test_hang_names_the_rank_that_stopped_first_and_the_last_step() -> None:
    ranks = (
        rank(0, step=42, progressed=10, answered=100),
        rank(1, step=42, progressed=10, answered=12),  # SIGSTOPped: silent since 12
        rank(2, step=42, progressed=10, answered=100),
    )
    verdict = health.hang(GangProgress(1, ranks, looks_since_progress=80), 60, at(100))
    assert verdict is not None
    assert verdict.first.pod == "j-worker-1" and verdict.step == 42 and verdict.seconds == 90
    text = verdict.message(60, at(100))
    assert "no rank advanced for 90s (progressDeadlineSeconds=60)" in text
    assert "last step 42" in text and "pod j-worker-1" in text and "node-1" in text and "silent for 88s" in text


def test_hang_blames_a_rank_behind_the_others_before_a_silent_one() -> None:
    ranks = (rank(0, step=41, progressed=5, answered=100), rank(1, step=42, progressed=10, answered=12))
    verdict = health.hang(GangProgress(1, ranks, looks_since_progress=80), 60, at(100))
    assert verdict is not None and verdict.first.pod == "j-worker-0"


# --- straggler ----------------------------------------------------------------------------------------


def timed(index: int, seconds: float | None, intervals: int = 4) -> RankProgress:
    return rank(index, step_seconds=seconds, intervals=intervals)


@pytest.mark.parametrize(
    ("case", "ranks", "slow"),
    [
        ("even gang", [timed(0, 0.20), timed(1, 0.21), timed(2, 0.19), timed(3, 0.20)], []),
        ("one 1.6x slower", [timed(0, 0.20), timed(1, 0.20), timed(2, 0.32), timed(3, 0.20)], ["j-worker-2"]),
        ("just under the threshold", [timed(0, 0.20), timed(1, 0.29), timed(2, 0.20)], []),
        ("exactly at the threshold", [timed(0, 0.25), timed(1, 0.375), timed(2, 0.25)], ["j-worker-1"]),
        ("two ranks: the slow one only", [timed(0, 0.10), timed(1, 0.30)], ["j-worker-1"]),
        # Window: a rank timed over fewer than MIN_INTERVALS scrape intervals is not judged yet.
        ("too few intervals", [timed(0, 0.20), timed(1, 0.20), timed(2, 0.60, intervals=2)], []),
        ("one timed rank", [timed(0, 0.20), timed(1, None, intervals=0)], []),
        # Noise: a big ratio of tiny numbers is timer jitter, not a straggler.
        ("sub-millisecond", [timed(0, 0.0001), timed(1, 0.0004), timed(2, 0.0001)], []),
        ("slowest first", [timed(0, 0.1), timed(1, 0.5), timed(2, 0.1), timed(3, 0.3)], ["j-worker-1", "j-worker-3"]),
    ],
)
def test_straggler_table(case: str, ranks: list[RankProgress], slow: list[str]) -> None:
    assert [s.rank.pod for s in health.stragglers(ranks, 1.5)] == slow, case


def test_straggler_message_names_pod_node_and_ratio() -> None:
    [s] = health.stragglers([timed(0, 0.20), timed(1, 0.20), timed(3, 0.32)], 1.5)
    assert s.message() == "j-worker-3 on node-3 is 1.6x slower than the median of the other ranks"


def sample(at_s: float, steps: float, step_sum: float, wait: float) -> PodSample:
    return PodSample(
        at=at_s, attempt=1, samples=steps * 32, steps=steps, step_seconds_sum=step_sum,
        step_seconds_count=steps, wait_seconds=wait,
    )  # fmt: skip


def test_one_slow_step_moves_one_interval_not_the_median() -> None:
    # 10 steps of 0.1 s per 1 s interval; one interval holds a 5 s checkpoint step.
    window, total, steps = [], 0.0, 0
    for i in range(6):
        window.append(sample(i, steps, total, 0.0))
        steps += 10
        total += 1.0 + (5.0 if i == 2 else 0.0)
    seconds, intervals = rank_step_seconds(window)
    assert intervals == 5 and seconds == pytest.approx(0.1)


def test_step_time_excludes_the_wait_for_peers() -> None:
    # A fast rank in lockstep with a slow one: 0.3 s steps, 0.2 s of them waiting in the all-reduce.
    window = [sample(i, 10 * i, 3.0 * i, 2.0 * i) for i in range(5)]
    seconds, intervals = rank_step_seconds(window)
    assert intervals == 4 and seconds == pytest.approx(0.1)


def test_window_of_too_few_intervals_gives_no_step_time() -> None:
    assert rank_step_seconds([sample(i, 10 * i, 1.0 * i, 0) for i in range(3)]) == (None, 2)


# --- unhealthy GPU ------------------------------------------------------------------------------------


KUBELET_STATUS = {
    "containerStatuses": [
        {
            "name": "trainer",
            "allocatedResourcesStatus": [
                {
                    "name": "nvidia.com/gpu",
                    "resources": [
                        {"resourceID": "GPU-0aa", "health": "Healthy"},
                        {"resourceID": "GPU-1bb", "health": "Unhealthy"},
                    ],
                }
            ],
        }
    ]
}


def test_devices_are_read_from_allocated_resources_status() -> None:
    assert devices_of(KUBELET_STATUS) == (
        ("nvidia.com/gpu", "GPU-0aa", "Healthy"),
        ("nvidia.com/gpu", "GPU-1bb", "Unhealthy"),
    )
    assert devices_of({}) == ()


@pytest.mark.parametrize(
    ("case", "pods", "found"),
    [
        ("all healthy", [pod(0, devices=(("nvidia.com/gpu", "GPU-a", "Healthy"),))], None),
        ("unknown is not unhealthy", [pod(0, devices=(("nvidia.com/gpu", "GPU-a", "Unknown"),))], None),
        ("unhealthy", [pod(0), pod(1, node="gpu-7", devices=(("nvidia.com/gpu", "GPU-b", "Unhealthy"),))], "GPU-b"),
        ("finished pod", [pod(1, phase="Succeeded", devices=(("nvidia.com/gpu", "GPU-b", "Unhealthy"),))], None),
    ],
)
def test_unhealthy_device_table(case: str, pods: list[PodView], found: str | None) -> None:
    bad = health.unhealthy_device(pods)
    assert (bad.device if bad else None) == found, case


def test_avoided_nodes_keep_the_newest() -> None:
    assert health.avoid(["a", "b"], "a", 16) == ["b", "a"]
    assert health.avoid([str(i) for i in range(16)], "x", 16) == [*[str(i) for i in range(1, 16)], "x"]


# --- the reconcile acting on them ---------------------------------------------------------------------


def running_status(**kw: object) -> TrainingJobStatus:
    first = reconcile(job(spec(**kw)), [pod(0), pod(1)], True, T0)  # type: ignore[arg-type]
    s = first.status.model_copy(deep=True)
    s.attempt = 1
    return reconcile(job(spec(**kw), s), [pod(0), pod(1)], True, T0).status  # type: ignore[arg-type]


def telemetry(progress: GangProgress) -> JobTelemetry:
    return JobTelemetry(attempt=1, replicas=2, pods_reporting=2, observed_at=at(100), progress=progress)


HUNG = GangProgress(1, (rank(0, step=7, progressed=10, answered=100), rank(1, step=7, progressed=10, answered=20)), 50)


def test_hung_gang_restarts_with_reason_hung_counting_toward_backoff_limit() -> None:
    extra = {"runPolicy": {"progressDeadlineSeconds": 60, "backoffLimit": 3}}
    s = running_status(**extra)
    assert cond.is_true(s, cond.RUNNING)
    plan = reconcile(job(spec(**extra), s), [pod(0), pod(1)], True, at(100), telemetry=telemetry(HUNG))
    r = plan.status
    assert (r.attempt, r.restarts, r.state) == (2, 1, "Restarting")
    c = cond.get(r, cond.RESTARTING)
    assert c is not None and c.reason == "Hung"
    assert "last step 7" in c.message and "pod j-worker-1" in c.message and "(restart 1 of 3)" in c.message
    assert r.lost_time is not None and r.lost_time.hung_seconds == 90
    assert sorted(p.name for p in plan.delete_pods) == ["j-a1-worker-0", "j-a1-worker-1"]


def test_hang_detection_is_off_without_a_deadline() -> None:
    s = running_status()
    plan = reconcile(job(spec(), s), [pod(0), pod(1)], True, at(100), telemetry=telemetry(HUNG))
    assert plan.status.attempt == 1


def test_hang_with_backoff_limit_used_fails_the_job() -> None:
    extra = {"runPolicy": {"progressDeadlineSeconds": 60, "backoffLimit": 0}}
    plan = reconcile(
        job(spec(**extra), running_status(**extra)), [pod(0), pod(1)], True, at(100), telemetry=telemetry(HUNG)
    )
    c = cond.get(plan.status, cond.FAILED)
    assert c is not None and c.reason == "BackoffLimitExceeded" and "no rank advanced" in c.message


SLOW = GangProgress(1, (timed(0, 0.1), rank(1, step_seconds=0.3, intervals=4)), 0)


def test_straggler_sets_the_condition_and_clears_it() -> None:
    s = running_status()
    plan = reconcile(job(spec(), s), [pod(0), pod(1)], True, at(100), telemetry=telemetry(SLOW))
    c = cond.get(plan.status, cond.STRAGGLER)
    assert c is not None and c.status == "True" and c.message.startswith("j-worker-1 on node-1 is 3.0x slower")
    assert plan.status.attempt == 1  # reported only: no restart unless asked
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "SlowRank")]
    even = GangProgress(1, (timed(0, 0.1), timed(1, 0.1)), 0)
    after = reconcile(job(spec(), plan.status), [pod(0), pod(1)], True, at(130), telemetry=telemetry(even))
    c = cond.get(after.status, cond.STRAGGLER)
    assert c is not None and c.status == "False"


def test_straggler_restart_avoids_its_node() -> None:
    extra = {"health": {"straggler": {"restart": True}}}
    plan = reconcile(
        job(spec(**extra), running_status(**extra)), [pod(0), pod(1)], True, at(100), telemetry=telemetry(SLOW)
    )
    r = plan.status
    c = cond.get(r, cond.RESTARTING)
    assert c is not None and c.reason == "Straggler" and "kept off node node-1" in c.message
    assert r.avoided_nodes == ["node-1"] and r.attempt == 2


def test_unhealthy_gpu_restarts_the_gang_off_that_node_and_the_next_pods_avoid_it() -> None:
    bad = (("nvidia.com/gpu", "GPU-1bb", "Unhealthy"),)
    s = running_status()
    plan = reconcile(job(spec(), s), [pod(0, node="gpu-1"), pod(1, node="gpu-2", devices=bad)], True, at(5))
    r = plan.status
    c = cond.get(r, cond.RESTARTING)
    assert c is not None and c.reason == "GPUUnhealthy"
    assert "device GPU-1bb (nvidia.com/gpu) of pod j-a1-worker-1 on node gpu-2 is Unhealthy" in c.message
    assert r.avoided_nodes == ["gpu-2"] and r.restarts == 1
    manifest = build_pod(Gang("j", NS, "uid", spec(), r.attempt, tuple(r.avoided_nodes)), 0)
    terms = manifest["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["gpu-2"]}]}]
    }


def test_unhealthy_gpu_restart_can_be_turned_off() -> None:
    extra = {"health": {"restartOnUnhealthyGpu": False}}
    bad = (("nvidia.com/gpu", "GPU-1bb", "Unhealthy"),)
    plan = reconcile(job(spec(**extra), running_status(**extra)), [pod(0), pod(1, devices=bad)], True, at(5))
    assert plan.status.attempt == 1


def test_avoided_nodes_join_every_node_selector_term_of_the_template() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]},
    ]}}}  # fmt: skip
    s = spec(template={"spec": {"affinity": affinity, "containers": [{"name": "trainer", "image": "i"}]}})
    manifest = build_pod(Gang("j", NS, "uid", s, 2, ("n1",)), 0)
    terms = manifest["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    for term in terms["nodeSelectorTerms"]:
        assert term["matchFields"] == [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]
        assert term["matchExpressions"]


def test_time_between_attempts_is_counted_as_lost() -> None:
    extra = {"runPolicy": {"progressDeadlineSeconds": 60}}
    s = running_status(**extra)
    hung = reconcile(job(spec(**extra), s), [pod(0), pod(1)], True, at(100), telemetry=telemetry(HUNG)).status
    new = [pod(0, attempt=2), pod(1, attempt=2)]
    running = reconcile(job(spec(**extra), hung), new, True, at(125)).status
    assert running.state == "Running" and running.lost_time is not None
    assert (running.lost_time.hung_seconds, running.lost_time.restart_seconds) == (90, 25)


# --- preflight ----------------------------------------------------------------------------------------

PREFLIGHT = {"preflight": {"allReduceBytes": 1048576, "timeoutSeconds": 30}}


def test_preflight_env_names_every_peer() -> None:
    manifest = build_pod(Gang("j", NS, "uid", spec(replicas=3, **PREFLIGHT), 1), 1)
    container = manifest["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PHALANX_PREFLIGHT_PEERS"] == ",".join(f"j-worker-{i}.j.{NS}.svc" for i in range(3))
    assert (env["PHALANX_PREFLIGHT_ALLREDUCE_BYTES"], env["PHALANX_PREFLIGHT_TIMEOUT_SECONDS"]) == ("1048576", "30")
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    plain = build_pod(Gang("j", NS, "uid", spec(), 1), 0)["spec"]["containers"][0]
    assert not any(e["name"].startswith("PHALANX_PREFLIGHT") for e in plain["env"])


def test_failed_preflight_restarts_the_gang_off_the_pods_node_naming_the_cause() -> None:
    log_tail = (
        "loading\nphalanx_trainer.examples.pytorch_ddp: preflight failed: peer j-worker-1.j.team-a.svc does not "
        "resolve after 20s: [Errno -2] Name or service not known\n"
    )
    failed = pod(0, phase="Failed", exit_code=3, node="gpu-4", message=log_tail)
    plan = reconcile(job(spec(**PREFLIGHT), TrainingJobStatus(attempt=1)), [failed, pod(1)], True, T0)
    r = plan.status
    c = cond.get(r, cond.RESTARTING)
    assert c is not None and c.reason == "PreflightFailed"
    assert c.message.startswith(
        "preflight failed in pod j-a1-worker-0 on node gpu-4: peer j-worker-1.j.team-a.svc does not resolve after 20s"
    )
    assert r.avoided_nodes == ["gpu-4"] and r.restarts == 1


def test_exit_code_3_without_preflight_is_an_ordinary_failure() -> None:
    failed = pod(0, phase="Failed", exit_code=3, node="gpu-4")
    plan = reconcile(job(spec(), TrainingJobStatus(attempt=1)), [failed, pod(1)], True, T0)
    c = cond.get(plan.status, cond.FAILED)
    assert c is not None and c.reason == "PodFailed" and not plan.status.avoided_nodes


def test_preflight_result_goes_into_status_once_per_attempt() -> None:
    s = running_status(**PREFLIGHT)
    t = JobTelemetry(
        attempt=1,
        replicas=2,
        pods_reporting=2,
        observed_at=at(30),
        preflight_seconds=4.234,
        preflight_bandwidth=1.2345e9,
    )
    plan = reconcile(job(spec(**PREFLIGHT), s), [pod(0), pod(1)], True, at(30), telemetry=t)
    p = plan.status.preflight
    assert p is not None and (p.attempt, p.seconds, p.bus_bandwidth_bytes_per_second) == (1, 4.23, 1.23e9)
    assert plan.status.lost_time is not None and plan.status.lost_time.preflight_seconds == 4.2
    assert [e.reason for e in plan.events] == ["PreflightPassed"]
    again = reconcile(job(spec(**PREFLIGHT), plan.status), [pod(0), pod(1)], True, at(45), telemetry=t)
    assert not again.status_changed and not again.events


# --- node-level GPU health: conditions and taints -----------------------------------------------------

XID = {
    "type": "AcceleratedHardwareReady",
    "status": "False",
    "reason": "NvidiaXID79",
    "message": "fell off the bus",
}
XID_WHY = "condition AcceleratedHardwareReady=False (NvidiaXID79: fell off the bus)"
TAINT = {"key": "gpu.health/unhealthy", "value": "xid", "effect": "NoSchedule"}
DEFAULTS = health.NodeSignals()


@pytest.mark.parametrize(
    ("case", "conditions", "taints", "signals", "why"),
    [
        ("healthy", [{"type": "Ready", "status": "True"}], [], DEFAULTS, None),
        ("EKS agent", [XID], [], DEFAULTS, XID_WHY),
        ("condition True is fine", [{**XID, "status": "True"}], [], DEFAULTS, None),
        ("taint", [], [TAINT], health.NodeSignals(taints=("gpu.health/unhealthy",)),
         "taint gpu.health/unhealthy=xid:NoSchedule"),
        ("taint not configured", [], [TAINT], DEFAULTS, None),
        ("conditions off", [XID], [], health.NodeSignals(conditions=()), None),
    ],
)  # fmt: skip
def test_node_unhealthy_table(
    case: str,
    conditions: list[dict[str, str]],
    taints: list[dict[str, str]],
    signals: health.NodeSignals,
    why: str | None,
) -> None:
    assert health.node_unhealthy(conditions, taints, signals) == why, case


def test_node_signals_from_the_operators_environment() -> None:
    from phalanx.controller import node_signals as ns

    assert ns.from_env({}) == health.NodeSignals()
    got = ns.from_env({ns.ENV_CONDITIONS: "GpuHealthy=False, XidErrors=True", ns.ENV_TAINTS: "a/b, c"})
    assert got == health.NodeSignals(conditions=(("GpuHealthy", "False"), ("XidErrors", "True")), taints=("a/b", "c"))
    assert ns.from_env({ns.ENV_CONDITIONS: ""}).conditions == ()
    with pytest.raises(
        ns.NodeSignalsError, match=r"PHALANX_UNHEALTHY_NODE_CONDITIONS=.*'GpuHealthy' is not Type=Status"
    ):
        ns.from_env({ns.ENV_CONDITIONS: "GpuHealthy"})


def test_an_unhealthy_node_is_not_schedulable_for_admission() -> None:
    from phalanx.controller.caches import node_entry

    body = {
        "metadata": {"name": "gpu-3", "labels": {}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}, XID]},
    }
    view = node_entry(body)
    assert not view.schedulable and view.unhealthy is not None and "NvidiaXID79" in view.unhealthy


def test_a_rank_on_an_unhealthy_node_restarts_the_gang_off_it() -> None:
    s = running_status()
    pods = [pod(0, node="gpu-1"), pod(1, node="gpu-3")]
    plan = reconcile(
        job(spec(), s), pods, True, at(5), unhealthy_nodes={"gpu-3": "condition AcceleratedHardwareReady=False"}
    )
    r = plan.status
    c = cond.get(r, cond.RESTARTING)
    assert c is not None and c.reason == "GPUUnhealthy"
    assert c.message.startswith(
        "node gpu-3 of pod j-a1-worker-1 is unhealthy: condition AcceleratedHardwareReady=False"
    )
    assert r.avoided_nodes == ["gpu-3"]
