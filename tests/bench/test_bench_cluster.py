"""The suite at small sizes on the test cluster: what it measures really exists and the counts match.
Timings are recorded, never asserted."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bench  # noqa: F401
from bench import kube, kubeflow, scenarios
from bench.subjects import SUBJECTS, Subject
from bench.watch import PodWatch, gang_running_at
from bench.workloads import JobSpec

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ctx(kubeconfig: Path, crd: Path, tmp_path_factory: pytest.TempPathFactory) -> scenarios.Ctx:
    return scenarios.Ctx(kubeconfig, tmp_path_factory.mktemp("bench"), timeout=120)


# One subject at a time: an operator running beside the baseline would act on the baseline's jobs.
@pytest.fixture(scope="module", params=["baseline", "phalanx"])
def subject(request: pytest.FixtureRequest, ctx: scenarios.Ctx) -> Iterator[Subject]:
    s = SUBJECTS[request.param](kubeconfig=ctx.kubeconfig, logs=ctx.out / "logs")
    s.start()
    yield s
    s.stop()


def _check(result: dict[str, Any], jobs: int, pods: int, services: int) -> None:
    v = result["verified"]
    assert result["errors"] == []
    assert v["ok"], v
    assert (v["jobs"], v["pods_expected"], v["pods_found"], v["pods_running"], v["pods_bound"]) == (
        jobs,
        pods,
        pods,
        pods,
        pods,
    )
    assert v["services_found"] == v["services_expected"] == services


def test_job_start_counts_the_pods_it_waited_for(ctx: scenarios.Ctx, subject: Subject) -> None:
    r = scenarios.job_start(ctx, subject, 2)
    _check(r, 1, 2, 1)
    assert r["created_s"] <= r["bound_s"] <= r["running_s"]  # stamps of the same pods, in lifecycle order
    assert r["cpu_seconds"] >= 0 and r["peak_rss_mib"] > 0


def test_throughput_waits_for_every_job(ctx: scenarios.Ctx, subject: Subject) -> None:
    r = scenarios.throughput(ctx, subject, jobs=5, workers=2)
    _check(r, 5, 10, 5)
    assert r["job_latency_p50_s"] <= r["job_latency_p95_s"] <= r["all_running_s"]


def test_recovery_replaces_the_gang(ctx: scenarios.Ctx, subject: Subject) -> None:
    r = scenarios.recovery(ctx, subject, workers=4)
    _check(r, 1, 4, 1)
    assert r["pods_replaced"] == 4  # the whole gang, as attempt 2
    assert r["failed_seen_s"] is not None and r["failed_seen_s"] <= r["recovered_s"]


def test_node_loss_replaces_the_gang_without_the_deleted_node(ctx: scenarios.Ctx, subject: Subject) -> None:
    if subject.name != "phalanx":
        pytest.skip("node loss is measured for phalanx only")
    r = scenarios.node_loss(ctx, subject, workers=3)
    _check(r, 1, 3, 1)
    assert r["pods_replaced"] == 3 and r["node_lost_events"] == 1
    assert r["first_delete_s"] is not None and r["first_delete_s"] <= r["old_pods_gone_s"] <= r["recovered_s"]


def test_sustained_rate_runs_and_deletes_every_job(ctx: scenarios.Ctx, subject: Subject) -> None:
    r = scenarios.sustained(ctx, subject, rate=1.0, seconds=4, workers=2, pod_seconds=2, drain=60)
    assert r["errors"] == []
    assert r["jobs"] == 4 and r["jobs_running"] == 4


def test_footprint_grows_to_each_step(ctx: scenarios.Ctx, subject: Subject) -> None:
    rows = scenarios.footprint(ctx, subject, steps=[2, 3], workers=2, idle_seconds=1)
    assert [r["jobs"] for r in rows] == [2, 3] and [r["jobs_added"] for r in rows] == [2, 1]
    _check(rows[-1], 3, 6, 3)
    assert all(r["rss_mib"] > 0 and r["idle_cpu_pct_of_core"] >= 0 for r in rows)


def _normalized_pods(ctx: scenarios.Ctx, ns: str) -> dict[str, Any]:
    items = kube.raw(ctx.core.list_namespaced_pod(ns, _preload_content=False))["items"]
    out = {}
    for p in items:
        meta = {k: p["metadata"].get(k) for k in ("name", "labels", "annotations")}
        spec = {k: v for k, v in p["spec"].items() if k not in ("nodeName",)}
        # phalanx's ungate patch also adds a preferred nodeAffinity for the node its admission planned;
        # the baseline lifts the gate alone (same number of calls). Everything else must be identical.
        affinity = dict(spec.get("affinity") or {})
        preferred = (affinity.pop("nodeAffinity", None) or {}).get("preferredDuringSchedulingIgnoredDuringExecution")
        assert preferred is None or [t["weight"] for t in preferred] == [100]
        spec["affinity"] = affinity
        out[p["metadata"]["name"]] = {"metadata": meta, "spec": spec}
    return out


def test_baseline_creates_exactly_the_objects_phalanx_creates(ctx: scenarios.Ctx) -> None:
    """The limit baseline is only fair if it creates the same pods and Service: compare them field by field
    (after the apiserver's defaulting; node and namespace aside)."""
    seen: dict[str, Any] = {}
    for name in ("baseline", "phalanx"):
        s = SUBJECTS[name](kubeconfig=ctx.kubeconfig, logs=ctx.out / "logs")
        s.start()
        ns = ctx.namespace(f"same-{name}")
        try:
            with PodWatch(ctx.api, ns, s.job_label) as w:
                s.submit(ns, JobSpec("same", 3))
                w.wait(lambda pods: gang_running_at(list(pods.values()), 3), 120, "pods Running")
            time.sleep(0.5)
            pods = _normalized_pods(ctx, ns)
            svc = kube.raw(ctx.core.read_namespaced_service("same", ns, _preload_content=False))
            seen[name] = str(
                {"pods": pods, "svc": {"labels": svc["metadata"]["labels"], "ports": svc["spec"]["ports"]}}
            ).replace(ns, "NS")
            # The ServiceAccount token volume gets a random suffix from the apiserver.
            seen[name] = re.sub(r"kube-api-access-[a-z0-9]+", "kube-api-access-X", seen[name])
        finally:
            s.stop()
            ctx.cleanup(ns)
    assert seen["baseline"] == seen["phalanx"]


def test_verify_notices_missing_objects(ctx: scenarios.Ctx) -> None:
    s = SUBJECTS["phalanx"](kubeconfig=ctx.kubeconfig, logs=ctx.out / "logs")  # not started: nothing creates pods
    ns = ctx.namespace("empty")
    try:
        v = scenarios.verify(ctx, s, ns, {"job": 2})
    finally:
        ctx.cleanup(ns)
    assert not v["ok"] and v["pods_found"] == 0 and v["services_found"] == 0


@pytest.fixture(scope="module")
def kubeflow_subject(ctx: scenarios.Ctx) -> Iterator[Subject]:
    if not kubeflow.binary().is_file():
        pytest.skip(f"{kubeflow.binary()} not built; build: python -m bench --build-kubeflow")
    kube.apply_crd(ctx.api, kubeflow.crd_path())
    kubeflow.prepare_cluster(ctx.api)
    s = SUBJECTS["kubeflow"](kubeconfig=ctx.kubeconfig, logs=ctx.out / "logs")
    s.start()
    yield s
    s.stop()


def test_kubeflow_job_start_and_recovery(ctx: scenarios.Ctx, kubeflow_subject: Subject) -> None:
    r = scenarios.job_start(ctx, kubeflow_subject, 2)
    _check(r, 1, 2, 2)  # one Service per replica
    r = scenarios.recovery(ctx, kubeflow_subject, workers=4)
    _check(r, 1, 4, 4)
    assert r["pods_replaced"] == 1  # ExitCode policy recreates only the failed replica
