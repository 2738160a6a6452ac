"""The CLI's pure views: the status report and its text, top's rows and order, log interleaving, the
plot's data and refusals, and the exit codes of the command line. No cluster (test_cli_cluster.py
checks the same views against the real control plane)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from phalanx.cli import logs, plot, render, status, top
from phalanx.cli.errors import CliError
from phalanx_trainer.metrics import TrainerMetrics
from tests.cli.runner import cli

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, value: str, reason: str, message: str = "", ago: float = 60) -> dict[str, Any]:
    return {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": stamp(ago)}


def body(status: dict[str, Any] | None = None, name: str = "j", ns: str = "team", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": "u1", "creationTimestamp": stamp(600)},
        "spec": {
            "framework": "pytorch",
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "t"}]}},
            **spec,
        },
        "status": status or {},
    }


def pod(index: int, attempt: int = 1, phase: str = "Running", ip: str | None = "10.0.0.1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"j-worker-{index}",
            "labels": {"phalanx.dev/replica-index": str(index), "phalanx.dev/attempt": str(attempt)},
        },
        "spec": {"nodeName": f"node-{index}"},
        "status": {"phase": phase, "podIP": ip},
    }


def exposition(attempt: int, steps: int, resumed: int | None = None) -> str:
    m = TrainerMetrics(local_world_size=1)
    m.set_identity(world_size=2, rank=0, attempt=attempt, procs_per_pod=1)
    for _ in range(steps):
        m.observe_step(0.02, 16)  # 800 samples/s
    m.set_resumed_from(resumed)
    return generate_latest(m.registry).decode()


RUNNING = {
    "state": "Running",
    "attempt": 2,
    "restarts": 1,
    "worldSize": 2,
    "gpus": 0,
    "readySummary": "2/2",
    "startTime": stamp(500),
    "conditions": [
        condition("Admitted", "True", "GangAdmitted", "all 2 pods fit and may schedule"),
        condition("Running", "True", "AllReplicasRunning", "2 pods, world size 2, attempt 2"),
        condition("Restarting", "False", "GangRunning", "attempt 2 is running"),
    ],
    "lastCheckpoint": {"step": 400, "time": stamp(30)},
    "resumedFromStep": 400,
    "throughput": {
        "samplesPerSecond": 1500.0,
        "scalingEfficiency": 0.938,
        "baselineSamplesPerSecond": 800.0,
        "baselineReplicas": 1,
        "goodput": 0.71,
    },
}
RESTART_EVENT = {
    "reason": "GangRestart",
    "type": "Warning",
    "message": "pod j-worker-1 exited with code 137 (OOMKilled); restarting all 2 pods as attempt 2 (restart 1 of 3)",
    "lastTimestamp": stamp(120),
}


def test_status_report_of_a_restarted_running_job_field_by_field() -> None:
    pods = [pod(0, 2), pod(1, 2), pod(1, 1, "Failed")]  # the failed pod of attempt 1 is not a rank any more
    metrics = {"j-worker-0": exposition(2, 10, resumed=400), "j-worker-1": None}
    r = status.report(body(RUNNING), pods, [RESTART_EVENT], metrics, NOW, wall=time.time() + 100)
    assert (r["name"], r["namespace"], r["state"], r["attempt"], r["restarts"]) == ("j", "team", "Running", 2, 1)
    assert (r["framework"], r["strategy"], r["replicas"], r["worldSize"], r["backoffLimit"]) == (
        "pytorch",
        "ddp",
        2,
        2,
        3,
    )
    assert r["restartHistory"] == [
        {"attempt": 2, "reason": "GangRestart", "message": RESTART_EVENT["message"], "time": stamp(120), "seconds": 120}
    ]
    assert r["waiting"] is None and r["ended"] is None
    assert r["lastCheckpoint"] == {"step": 400, "time": stamp(30), "seconds": 30} and r["resumedFromStep"] == 400
    assert r["throughput"] == {
        "samplesPerSecond": 1500.0,
        "scalingEfficiency": 0.938,
        "baselineSamplesPerSecond": 800.0,
        "baselineReplicas": 1,
        "baselineDeclared": False,
        "goodput": 0.71,
    }
    rank0, rank1 = r["ranks"]
    assert (rank0["pod"], rank0["ranks"], rank0["phase"], rank0["node"], rank0["metrics"]) == (
        "j-worker-0",
        "0",
        "Running",
        "node-0",
        "ok",
    )
    assert rank0["step"] == 410  # resumed at 400, 10 steps since
    assert rank0["samplesPerSecond"] == pytest.approx(800.0)
    assert rank0["lastStepSeconds"] == pytest.approx(100, abs=30)  # the steps ran just now; "now" is 100 s on
    assert (rank1["metrics"], rank1["step"], rank1["samplesPerSecond"]) == ("unreachable", None, None)


def test_status_text_shows_each_part() -> None:
    metrics = {"j-worker-0": exposition(2, 10, resumed=400)}
    r = status.report(body(RUNNING), [pod(0, 2), pod(1, 2)], [RESTART_EVENT], metrics, NOW)
    text = status.text(r, NOW)
    assert "State:       Running   attempt 2, 1 restart of backoffLimit 3" in text
    assert "Checkpoint:  step 400, 30s old" in text and "attempt 2 resumed from step 400" in text
    assert "Throughput:  1500 samples/s   efficiency 0.938 (X(1) 800 samples/s per pod, measured at 1 pod)" in text
    assert "goodput 0.71" in text
    assert "  2         GangRestart   2m    pod j-worker-1 exited with code 137" in text
    assert "j-worker-1   Running   node-1   -      -           no metrics" in text


def test_status_of_a_queued_job_says_why_with_the_operators_numbers() -> None:
    queued = {
        "state": "Queued",
        "attempt": 1,
        "conditions": [
            condition("Admitted", "False", "InsufficientGPUs", "needs 2 pods x 8 nvidia.com/gpu; 4 free", 90)
        ],
    }
    r = status.report(body(queued), [pod(0, 1, "Pending", None), pod(1, 1, "Pending", None)], [], {}, NOW)
    assert r["waiting"] == {
        "state": "Queued",
        "type": "Admitted",
        "status": "False",
        "reason": "InsufficientGPUs",
        "message": "needs 2 pods x 8 nvidia.com/gpu; 4 free",
        "since": stamp(90),
        "seconds": 90,
    }
    assert [x["phase"] for x in r["ranks"]] == ["Pending", "Pending"]
    text = status.text(r, NOW)
    assert "Waiting:     Queued for 1m30s: InsufficientGPUs: needs 2 pods x 8 nvidia.com/gpu; 4 free" in text
    assert "Throughput:  no metrics yet (the job is not running)" in text


def test_status_of_a_failed_job_gives_the_reason_and_a_restarting_one_its_cause() -> None:
    failed = {
        "state": "Failed",
        "attempt": 1,
        "completionTime": stamp(10),
        "conditions": [condition("Failed", "True", "PodFailed", "pod j-worker-0 exited with code 1", 10)],
    }
    r = status.report(body(failed), [], [], {}, NOW)
    assert r["ended"]["reason"] == "PodFailed" and r["ended"]["seconds"] == 10 and r["waiting"] is None
    restarting = {
        "state": "Restarting",
        "attempt": 2,
        "restarts": 1,
        "conditions": [
            condition(
                "Restarting",
                "True",
                "GangRestart",
                "pod j-worker-1 exited with code 137; restarting all 2 pods as attempt 2 (restart 1 of 3)",
                5,
            )
        ],
    }
    r = status.report(body(restarting), [], [], {}, NOW)
    assert r["waiting"]["reason"] == "GangRestart" and r["waiting"]["seconds"] == 5
    # The Events expired: the cause still comes from the Restarting condition.
    assert [(h["attempt"], h["reason"]) for h in r["restartHistory"]] == [(2, "GangRestart")]


def test_metrics_of_another_attempt_are_not_shown_as_this_ranks() -> None:
    r = status.report(body(RUNNING), [pod(0, 2)], [], {"j-worker-0": exposition(1, 5)}, NOW)
    assert r["ranks"][0]["metrics"] == "unreadable" and r["ranks"][0]["step"] is None


def test_ranks_of_a_pod_with_several_processes() -> None:
    job = body({**RUNNING, "worldSize": 8}, resources={"gpus": 4})
    r = status.report(job, [pod(0, 2), pod(1, 2)], [], {}, NOW)
    assert [x["ranks"] for x in r["ranks"]] == ["0-3", "4-7"]


def test_top_sorts_biggest_first_and_jobs_without_numbers_last() -> None:
    def job(name: str, rate: float | None, eff: float | None, gpus: int, ns: str = "a") -> dict[str, Any]:
        t = {"samplesPerSecond": rate, "scalingEfficiency": eff, "goodput": 0.5} if rate else None
        return body({"state": "Running" if rate else "Queued", "gpus": gpus, "throughput": t}, name=name, ns=ns)

    bodies = [job("slow", 100.0, 0.99, 8), job("fast", 900.0, 0.7, 16, "b"), job("new", None, None, 4)]
    assert [r["name"] for r in top.rows(bodies, NOW)] == ["fast", "slow", "new"]
    assert [r["name"] for r in top.rows(bodies, NOW, "efficiency")] == ["slow", "fast", "new"]
    assert [r["name"] for r in top.rows(bodies, NOW, "gpus")] == ["fast", "slow", "new"]
    rows = top.rows(bodies, NOW)
    assert rows[0] == {
        "namespace": "b",
        "name": "fast",
        "state": "Running",
        "replicas": None,
        "worldSize": None,
        "samplesPerSecond": 900.0,
        "scalingEfficiency": 0.7,
        "goodput": 0.5,
        "gpus": 16,
        "restarts": 0,
        "ageSeconds": 600.0,
    }
    text = top.text(rows, all_namespaces=True).splitlines()
    assert text[0].split() == [
        "NAMESPACE",
        "NAME",
        "STATE",
        "REPLICAS",
        "SAMPLES/S",
        "EFFICIENCY",
        "GOODPUT",
        "GPUS",
        "RESTARTS",
        "AGE",
    ]
    assert text[1].split() == ["b", "fast", "Running", "-", "900", "0.700", "0.50", "16", "0", "10m"]
    assert text[3].split() == ["a", "new", "Queued", "-", "-", "-", "-", "4", "0", "10m"]
    assert top.text(rows, all_namespaces=False).splitlines()[0].startswith("NAME ")


def test_log_lines_are_merged_by_kubelet_timestamp_and_kept_in_rank_order_without() -> None:
    stamped = [
        [
            logs.Line("[rank 0]", "a", logs.split_stamp("2026-01-01T00:00:01.500000001Z a")[0]),
            logs.Line("[rank 0]", "c", logs.split_stamp("2026-01-01T00:00:03Z c")[0]),
        ],
        [logs.Line("[rank 1]", "b", logs.split_stamp("2026-01-01T00:00:02.1Z b")[0])],
    ]
    assert [(x.prefix, x.text) for x in logs.interleave(stamped)] == [
        ("[rank 0]", "a"),
        ("[rank 1]", "b"),
        ("[rank 0]", "c"),
    ]
    plain = [[logs.Line("[rank 0]", "x"), logs.Line("[rank 0]", "y")], [logs.Line("[rank 1]", "z")]]
    assert [x.text for x in logs.interleave(plain)] == ["x", "y", "z"]
    assert logs.split_stamp("step 10 loss 0.5") == (None, "step 10 loss 0.5")
    stamp_, text = logs.split_stamp("2026-01-01T00:00:01.123456789Z hello world")
    assert stamp_ == datetime(2026, 1, 1, 0, 0, 1, 123456, tzinfo=UTC) and text == "hello world"


def test_plot_points_recompute_efficiency_against_one_baseline() -> None:
    sizes = [
        {"replicas": 1, "worldSize": 1, "samplesPerSecond": 100.0},
        {"replicas": 4, "worldSize": 4, "samplesPerSecond": 340.0},
    ]
    t = {"samplesPerSecond": 340.0, "baselineSamplesPerSecond": 100.0, "baselineReplicas": 1, "sizes": sizes}
    data = plot.points(body({"state": "Running", "throughput": t}))
    assert [(p.world_size, p.samples_per_second, p.efficiency) for p in data] == [(1, 100.0, 1.0), (4, 340.0, 0.85)]


def test_plot_adds_a_declared_baseline_as_the_size_one_point() -> None:
    t = {
        "samplesPerSecond": 700.0,
        "baselineSamplesPerSecond": 400.0,
        "baselineReplicas": 1,
        "sizes": [{"replicas": 2, "worldSize": 2, "samplesPerSecond": 700.0}],
    }
    data = plot.points(body({"state": "Running", "throughput": t}, metrics={"baselineSamplesPerSecond": 400.0}))
    assert [(p.replicas, p.declared, p.efficiency) for p in data] == [(1, True, 1.0), (2, False, 0.875)]


@pytest.mark.parametrize(
    ("status_", "message"),
    [
        ({"state": "Queued"}, "has no throughput metrics yet (state Queued)"),
        (
            {
                "state": "Running",
                "throughput": {
                    "samplesPerSecond": 180.0,
                    "baselineSamplesPerSecond": 90.0,
                    "baselineReplicas": 2,
                    "sizes": [{"replicas": 2, "worldSize": 2, "samplesPerSecond": 180.0}],
                },
            },
            "throughput at one size only (2 pods, world size 2)",
        ),
    ],
)
def test_plot_with_too_little_data_is_refused(status_: dict[str, Any], message: str) -> None:
    with pytest.raises(CliError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plot.points(body(status_))


def test_plot_writes_a_png_of_the_documented_size(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plot needs matplotlib: pip install -e '.[plot]' (in the dev extra)")
    sizes = [{"replicas": n, "worldSize": n, "samplesPerSecond": 100.0 * n * (1 - 0.05 * n)} for n in (1, 2, 4)]
    t = {"samplesPerSecond": 320.0, "baselineSamplesPerSecond": 95.0, "baselineReplicas": 1, "sizes": sizes}
    out = tmp_path / "scaling.png"
    plot.draw(plot.points(body({"state": "Running", "throughput": t})), "team/j", out)
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (800, 450)


def test_ages_read_like_kubectl() -> None:
    assert [render.age(s) for s in (5, 59, 60, 303, 600, 3599, 3600, 7260, 86400, 90000)] == [
        "5s",
        "59s",
        "1m",
        "5m3s",
        "10m",
        "59m",
        "1h",
        "2h1m",
        "1d",
        "1d1h",
    ]
    assert render.age(None) == "-" and render.rate(1234.4) == "1234" and render.rate(61.54) == "61.5"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["status"],
        ["status", "j", "-o", "wide"],
        ["logs", "j", "--rank", "x"],
        ["plot", "j"],
        ["top", "--sort-by", "speed"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    res = cli(*args)
    assert res.returncode == 2 and "usage: kubectl phalanx" in res.stderr and "Traceback" not in res.stderr


def test_plot_to_a_non_png_name_is_a_usage_error() -> None:
    res = cli("plot", "j", "-o", "scaling.svg")
    assert res.returncode == 2
    assert res.stderr == "error: -o scaling.svg: plot writes a PNG; give a file name ending in .png\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "error: no kubeconfig at {path}: pass --kubeconfig FILE or set KUBECONFIG"),
        ("clusters: [", "error: bad kubeconfig {path}: while parsing a flow node"),
        ("apiVersion: v1\nkind: Config\n", "error: bad kubeconfig {path}: Invalid kube-config file."),
    ],
)
def test_bad_kubeconfig_is_one_line_exit_1(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "config"
    if content is not None:
        path.write_text(content)
    for args in (["status", "j"], ["top", "-A"], ["logs", "j"], ["plot", "j", "-o", str(tmp_path / "x.png")]):
        res = cli(*args, "--kubeconfig", str(path))
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith(message.format(path=path)) and len(res.stderr.splitlines()) == 1


def test_unreachable_server_is_one_line_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    res = cli("status", "j", "--kubeconfig", str(path))
    assert res.returncode == 1 and res.stderr.startswith("error: cannot reach the API server at https://127.0.0.1:1: ")
    assert len(res.stderr.splitlines()) == 1
    res = cli("top", "--kubeconfig", str(path), "--context", "elsewhere")
    assert res.returncode == 1 and "elsewhere" in res.stderr and len(res.stderr.splitlines()) == 1
