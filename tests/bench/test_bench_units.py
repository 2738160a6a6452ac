"""The bench's pure parts: manifests of the peer baseline, the statistics and the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bench  # noqa: F401  (operator/ and dev/ on sys.path)
from bench import report
from bench.watch import PodRecord, gang_running_at, max_time
from bench.workloads import KUBEFLOW_CONTAINER, KUBEFLOW_JOB_LABEL, JobSpec, pytorch_job, training_job

REPO = Path(__file__).resolve().parents[2]


def test_pytorch_job_has_the_same_pod_count_and_requests_as_the_training_job() -> None:
    for workers in (1, 2, 64):
        ptj = pytorch_job("ns", JobSpec("j", workers, {"a": "b"}))
        specs = ptj["spec"]["pytorchReplicaSpecs"]
        assert sum(r["replicas"] for r in specs.values()) == workers
        assert specs["Master"]["replicas"] == 1
        for r in specs.values():
            pod = r["template"]["spec"]
            c = pod["containers"][0]
            assert c["name"] == KUBEFLOW_CONTAINER
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert "schedulingGates" not in pod
            assert r["template"]["metadata"]["annotations"] == {"a": "b"}
            terms = pod["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            assert all(t["podAffinityTerm"]["labelSelector"]["matchLabels"] == {KUBEFLOW_JOB_LABEL: "j"} for t in terms)
    tj = training_job("ns", JobSpec("j", 3))
    assert tj["spec"]["replicas"] == 3 and tj["spec"]["resources"]["gpus"] == 1


def test_restart_policy_follows_the_job() -> None:
    def policy(job: JobSpec) -> str:
        return str(pytorch_job("n", job)["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"])

    assert policy(JobSpec("j", 2, restart=True)) == "ExitCode"
    assert policy(JobSpec("j", 2)) == "Never"


def _pod(uid: str, created: float, running: float | None, **kw: object) -> PodRecord:
    return PodRecord(uid=uid, name=uid, job="j", attempt=1, created=created, running=running, **kw)  # type: ignore[arg-type]


def test_gang_running_needs_every_live_pod_running() -> None:
    pods = [_pod("a", 1, 2), _pod("b", 1, None)]
    assert gang_running_at(pods, 2) is None
    pods[1].running = 3
    assert gang_running_at(pods, 2) == 3
    assert gang_running_at(pods, 3) is None
    # After a failure at t=10: a whole-gang restart needs all pods new; a single replacement needs one.
    pods[0].failed = 11
    new = _pod("c", 12, 13)
    assert gang_running_at([*pods, new], 2, since=10, whole_gang=False) == 13
    assert gang_running_at([*pods, new], 2, since=10, whole_gang=True) is None
    assert gang_running_at([*pods, new, _pod("d", 12, 14)], 2, since=10, whole_gang=True) == 14
    assert max_time(pods, "running") == 3
    assert max_time([_pod("x", 1, None)], "running") is None


def test_summaries_ratios_and_table() -> None:
    s = report.summarize([3.0, 1.0, None, 2.0])
    assert s is not None and s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and s["n"] == 3
    assert report.summarize([None]) is None
    b = report.summarize([1.0])
    assert report.ratio(s, b) == 2.0
    row = {"scenario": "x", "metric": "m", "unit": "s", "baseline": b, "phalanx": s, "ratio_baseline": 2.0}
    text = report.table([row], ["baseline", "phalanx"])
    assert "2.00x" in text and "2.00s [1.00-3.00]" in text
    md = report.markdown([row], ["baseline", "phalanx"])
    assert md.splitlines()[0].startswith("| scenario | metric | baseline | phalanx |")


def test_cli_rejects_unknown_scenarios_and_prints_help() -> None:
    run = [sys.executable, "-m", "bench"]
    bad = subprocess.run([*run, "nonsense"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown scenario" in bad.stderr
    ok = subprocess.run([*run, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "--sustain-seconds" in ok.stdout


def test_the_profiler_is_attached_only_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench import subjects

    started: list[list[str]] = []
    monkeypatch.setattr(subjects.subprocess, "Popen", lambda cmd, **_: started.append(cmd) or "proc")
    monkeypatch.delenv(subjects.PROFILE_ENV, raising=False)
    assert subjects.attach_profiler(1234, tmp_path) is None and started == []
    monkeypatch.setenv(subjects.PROFILE_ENV, str(tmp_path / "prof"))
    assert subjects.attach_profiler(1234, tmp_path) == "proc"
    assert started[0][:2] == ["py-spy", "record"] and "1234" in started[0] and (tmp_path / "prof").is_dir()


def test_profile_summary_puts_a_sample_in_its_innermost_category(tmp_path: Path) -> None:
    from bench import profile_summary

    (tmp_path / "p.txt").write_text(
        "run (kopf/_cogs/clients/watching.py:1);loads (json/__init__.py:346) 3\n"
        "w (kopf/_core/reactor/processing.py:1);build (kopf/_cogs/configs/diffbase.py:56);deepcopy (copy.py:146) 1\n"
    )
    counts, total = profile_summary.summarize([tmp_path / "p.txt"])
    assert total == 4 and counts["JSON decoding / encoding"] == 3
    assert counts["kopf: diff-base, patches, deepcopy, handler kwargs"] == 1
