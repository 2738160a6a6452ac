"""The scenarios. Each measurement runs in a fresh namespace with one subject running, and returns a
flat dict of numbers plus a `verified` block (the objects really exist and the counts match)."""

from __future__ import annotations

import functools
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from bench import kube, procstat
from bench.subjects import Subject
from bench.watch import PodRecord, PodWatch, by_job, gang_running_at, max_time
from bench.workloads import JobSpec, training_job

Log = Callable[[str], None]


@dataclass
class Ctx:
    kubeconfig: Path
    out: Path
    concurrency: int = 16
    log: Log = print
    timeout: float = 900.0
    api: kubernetes.client.ApiClient = field(init=False)
    core: kubernetes.client.CoreV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.api = kube.api_client(self.kubeconfig, 32)
        self.core = kubernetes.client.CoreV1Api(self.api)

    def namespace(self, hint: str) -> str:
        return kube.create_namespace(self.core, f"bench-{hint}-{secrets.token_hex(3)}")

    def cleanup(self, ns: str) -> float:
        """Jobs first (garbage collection takes their pods, and no controller recreates pods of a job that is
        gone), then the namespace; waits until its pods are gone."""
        custom = kubernetes.client.CustomObjectsApi(self.api)
        for group, version, plural in (kube.TJ, kube.PTJ):
            try:
                custom.delete_collection_namespaced_custom_object(
                    group, version, ns, plural, propagation_policy="Background"
                )
            except kubernetes.client.exceptions.ApiException as exc:
                if exc.status != 404:  # 404: that CRD is not installed
                    raise
        # Pods at once (grace 0): a graceful delete of thousands waits for kwok to finalize each one.
        try:
            self.core.delete_collection_namespaced_pod(ns, grace_period_seconds=0, _preload_content=False)
        except kubernetes.client.exceptions.ApiException as exc:
            # 504: thousands of pods take longer than the apiserver's request timeout; the deletion goes on
            # server-side and the namespace deletion below finishes the job.
            if exc.status not in (404, 500, 504):
                raise
        return kube.delete_namespace(self.core, ns, wait=self.timeout)


def verify(ctx: Ctx, subject: Subject, ns: str, jobs: dict[str, int], settle: float = 30.0) -> dict[str, Any]:
    """Read back from the API: per job, the pods (count, Running, bound) and the Services. A controller may
    still be creating Services after its pods run (Kubeflow creates them after the pods): the check is
    repeated for up to `settle` seconds; `settled_s` says how long it took."""
    started = time.monotonic()
    while True:
        result = _verify_once(ctx, subject, ns, jobs)
        result["settled_s"] = round(time.monotonic() - started, 2)
        if result["ok"] or time.monotonic() - started > settle:
            return result
        time.sleep(1.0)


def _verify_once(ctx: Ctx, subject: Subject, ns: str, jobs: dict[str, int]) -> dict[str, Any]:
    pods = ctx.core.list_namespaced_pod(ns, _preload_content=False)
    services = ctx.core.list_namespaced_service(ns, _preload_content=False)
    items = kube.raw(pods)["items"]
    svc = kube.raw(services)["items"]
    ok = True
    pods_found = running = bound = 0
    services_found = 0
    for job, workers in jobs.items():
        mine = [
            p
            for p in items
            if (p["metadata"].get("labels") or {}).get(subject.job_label) == job
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") != "Failed"
        ]
        pods_found += len(mine)
        running += sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Running")
        bound += sum(1 for p in mine if (p.get("spec") or {}).get("nodeName"))
        n_svc = sum(1 for s in svc if (s["metadata"].get("labels") or {}).get(subject.job_label) == job)
        services_found += n_svc
        ok = ok and len(mine) == workers and n_svc == subject.expected_services(workers)
    expected_pods = sum(jobs.values())
    return {
        "ok": ok and running == bound == expected_pods,
        "jobs": len(jobs),
        "pods_expected": expected_pods,
        "pods_found": pods_found,
        "pods_running": running,
        "pods_bound": bound,
        "services_expected": sum(subject.expected_services(w) for w in jobs.values()),
        "services_found": services_found,
    }


def _watching(subject: Subject, before: int, predicate: Callable[[dict[str, PodRecord]], Any]) -> Any:
    """predicate, but a failed client command ends the wait at once instead of at the timeout."""

    def check(pods: dict[str, PodRecord]) -> Any:
        assert subject.client is not None
        if len(subject.client.errors) > before:
            raise RuntimeError(f"{subject.name} client: {subject.client.errors[before:][:3]}")
        return predicate(pods)

    return check


def _errors(subject: Subject, before: int) -> list[str]:
    assert subject.client is not None
    return subject.client.errors[before:]


# --- job start -----------------------------------------------------------------------------------
def job_start(ctx: Ctx, subject: Subject, workers: int) -> dict[str, Any]:
    """One job of `workers` pods: create -> all pods created, all bound, all Running."""
    assert subject.client is not None
    ns = ctx.namespace(f"start-{subject.name}-{workers}")
    job = JobSpec("job", workers)
    nerr = len(subject.client.errors)
    try:
        with PodWatch(ctx.api, ns, subject.job_label) as w:
            calls0 = kube.api_writes(ctx.api)
            win = procstat.Window(subject.pid).start()
            t0 = time.monotonic()
            subject.submit(ns, job)
            running = _watching(subject, nerr, lambda pods: gang_running_at(list(pods.values()), workers))
            w.wait(running, ctx.timeout, "all pods Running")
            win.stop()
            pods = w.snapshot()
        result = {
            "created_s": _since(max_time(pods, "created"), t0),
            "bound_s": _since(max_time(pods, "bound"), t0),
            "running_s": _since(max_time(pods, "running"), t0),
            **_footprint(win),
            "api_writes": kube.delta(kube.api_writes(ctx.api), calls0),
            "verified": verify(ctx, subject, ns, {job.name: workers}),
            "errors": _errors(subject, nerr),
        }
    finally:
        ctx.cleanup(ns)
    return result


# --- throughput ----------------------------------------------------------------------------------
def throughput(ctx: Ctx, subject: Subject, jobs: int, workers: int) -> dict[str, Any]:
    """`jobs` jobs submitted at once: time until all are Running, jobs/s, per-job latency."""
    assert subject.client is not None
    ns = ctx.namespace(f"tput-{subject.name}-{jobs}")
    specs = [JobSpec(f"job-{i:04d}", workers) for i in range(jobs)]
    total = jobs * workers
    nerr = len(subject.client.errors)
    try:
        with PodWatch(ctx.api, ns, subject.job_label) as w:
            calls0 = kube.api_writes(ctx.api)
            win = procstat.Window(subject.pid).start()
            t0 = time.monotonic()
            for s in specs:
                subject.submit(ns, s)
            w.wait(_watching(subject, nerr, lambda pods: _ever_running(pods) >= total), ctx.timeout, "all Running")
            win.stop()
            pods = w.snapshot()
        groups = by_job(pods)
        latencies = sorted((max_time(groups[s.name], "running") or 0) - t0 for s in specs)
        elapsed = max(latencies)
        result = {
            "all_running_s": elapsed,
            "jobs_per_s": jobs / elapsed,
            "pods_per_s": total / elapsed,
            "job_latency_p50_s": _pct(latencies, 50),
            "job_latency_p95_s": _pct(latencies, 95),
            "all_created_s": _since(max_time(pods, "created"), t0),
            **_footprint(win),
            "api_writes": kube.delta(kube.api_writes(ctx.api), calls0),
            "verified": verify(ctx, subject, ns, {s.name: workers for s in specs}),
            "errors": _errors(subject, nerr),
        }
    finally:
        result_cleanup = ctx.cleanup(ns)
    result["cleanup_s"] = result_cleanup
    return result


def _ever_running(pods: dict[str, PodRecord]) -> int:
    return sum(1 for p in pods.values() if p.running is not None)


def _at_least(pods: dict[str, PodRecord], n: int) -> bool:
    return _ever_running(pods) >= n


# --- sustained rate ------------------------------------------------------------------------------
def sustained(
    ctx: Ctx, subject: Subject, rate: float, seconds: float, workers: int, pod_seconds: int, drain: float = 60.0
) -> dict[str, Any]:
    """Submit `rate` jobs/s for `seconds`; each pod succeeds `pod_seconds` after it is Running and the
    user deletes every finished job. Held = every job Running by the end of the drain, and the backlog
    (submitted, not yet all pods Running) in the last third of the window no larger than in the middle
    third (+ one second of submissions)."""
    from localcluster import sim

    assert subject.client is not None
    ns = ctx.namespace(f"rate-{subject.name}")
    annotations = sim.outcome_annotations(sim.SUCCEED, delay=f"{pod_seconds}s")
    count = max(int(rate * seconds), 1)
    submitted: dict[str, float] = {}
    started: dict[str, float] = {}
    backlog: list[tuple[float, int]] = []
    stop = threading.Event()
    nerr = len(subject.client.errors)
    try:
        with PodWatch(ctx.api, ns, subject.job_label) as w:

            def housekeeping() -> None:
                deleted: set[str] = set()
                while not stop.wait(1.0):
                    pods = w.snapshot()
                    now = time.monotonic()
                    for job, mine in by_job(pods).items():
                        if job not in submitted:
                            continue
                        if job not in started:
                            at = gang_running_at(mine, workers)
                            if at is not None:
                                started[job] = at
                        done = [p for p in mine if p.succeeded is not None]
                        if job not in deleted and len(done) >= workers:
                            deleted.add(job)
                            subject.delete(ns, job)
                    backlog.append((now, len(submitted) - len(started)))

            keeper = threading.Thread(target=housekeeping, daemon=True)
            win = procstat.Window(subject.pid).start()
            t0 = time.monotonic()
            keeper.start()
            for i in range(count):
                due = t0 + i / rate
                if (pause := due - time.monotonic()) > 0:
                    time.sleep(pause)
                name = f"job-{i:05d}"
                submitted[name] = time.monotonic()
                subject.submit(ns, JobSpec(name, workers, annotations))
            t_end = time.monotonic()
            deadline = t_end + drain
            while time.monotonic() < deadline and len(started) < count:
                time.sleep(0.5)
            stop.set()
            keeper.join(5)
            win.stop()
        lat = sorted(started[j] - submitted[j] for j in started)
        window = [b for t, b in backlog if t0 <= t <= t_end]
        third = max(len(window) // 3, 1)
        mid = statistics.median(window[third : 2 * third] or [0])
        last = statistics.median(window[-third:] or [0])
        held = len(started) == count and last <= mid + max(rate, 1.0)
        result = {
            "rate_jobs_per_s": rate,
            "achieved_submit_rate": count / max(t_end - t0, 1e-9),
            "seconds": seconds,
            "jobs": count,
            "jobs_running": len(started),
            "held": held,
            "backlog_mid_median": mid,
            "backlog_last_median": last,
            "backlog_max": max(window or [0]),
            "job_latency_p50_s": _pct(lat, 50),
            "job_latency_p95_s": _pct(lat, 95),
            **_footprint(win),
            "errors": _errors(subject, nerr),
        }
    finally:
        stop.set()
        ctx.cleanup(ns)
    return result


# --- recovery ------------------------------------------------------------------------------------
def recovery(ctx: Ctx, subject: Subject, workers: int, rank: int = 3) -> dict[str, Any]:
    """A `workers`-pod job Running; rank `rank` fails (exit 137, via the sim annotation): time until the
    replacement gang is all Running (for Kubeflow: the replaced replica and the rest all Running)."""
    from localcluster import sim

    assert subject.client is not None
    ns = ctx.namespace(f"recover-{subject.name}-{workers}")
    job = JobSpec("job", workers, restart=True)
    rank = min(rank, workers - 1)
    nerr = len(subject.client.errors)
    try:
        with PodWatch(ctx.api, ns, subject.job_label) as w:
            subject.submit(ns, job)
            w.wait(lambda pods: gang_running_at(list(pods.values()), workers), ctx.timeout, "first gang Running")
            armed = subject.arm_recovery(ns, job)
            if armed is not None:
                time.sleep(1.0)  # the baseline's own watch is listing; it answers when the restart is done
            victim = subject.rank_pod(job.name, rank)
            calls0 = kube.api_writes(ctx.api)
            win = procstat.Window(subject.pid).start()
            t0 = time.monotonic()
            sim.make_pod_fail(ctx.core, ns, victim, exit_code=137, reason="OOMKilled")
            whole = subject.whole_gang_restart
            replaced = _watching(subject, nerr, lambda pods: gang_running_at(list(pods.values()), workers, t0, whole))
            at = w.wait(replaced, ctx.timeout, "the replacement gang Running")
            win.stop()
            pods = w.snapshot()
        failed = min((p.failed for p in pods if p.failed is not None), default=None)
        first_delete = min((p.deleted for p in pods if p.deleted is not None and p.deleted >= t0), default=None)
        old = [p for p in pods if p.created < t0]
        replaced = [p for p in pods if p.created >= t0]
        gone = max((p.deleted for p in old if p.deleted is not None), default=None)
        result = {
            "recovered_s": at - t0,
            "failed_seen_s": _since(failed, t0),
            "first_delete_s": _since(first_delete, t0),
            "old_pods_gone_s": _since(gone, t0) if subject.whole_gang_restart else None,
            "pods_replaced": len(replaced),
            "replacement_created_s": _since(max_time(replaced, "created"), t0),
            **_footprint(win),
            "api_writes": kube.delta(kube.api_writes(ctx.api), calls0),
            "verified": verify(ctx, subject, ns, {job.name: workers}),
            "errors": _errors(subject, nerr),
        }
    finally:
        ctx.cleanup(ns)
    return result


# --- node loss -----------------------------------------------------------------------------------
NODE_LOSS_PRODUCT = "NVIDIA-BENCH-NODELOSS"  # a product of the scenario's own nodes only


def node_loss(ctx: Ctx, subject: Subject, workers: int, rank: int = 3) -> dict[str, Any]:
    """A `workers`-pod gang of 8-GPU pods, one per node, on nodes of its own (workers + 2, so the
    restarted gang fits without the lost one): the node under rank `rank` is deleted; time until the
    replacement gang is all Running. Before phalanx removed such pods itself (issue 16) the job waited
    for the pod garbage collector: 57 s for 16 workers."""
    from localcluster.nodes import add_nodes, delete_nodes, gpu_pool

    ns = ctx.namespace(f"nodeloss-{subject.name}-{workers}")
    pool = gpu_pool(f"bench-loss-{secrets.token_hex(2)}", count=workers + 2, product=NODE_LOSS_PRODUCT)
    nodes = add_nodes(ctx.core, pool)
    custom = kubernetes.client.CustomObjectsApi(ctx.api)
    body = training_job(ns, JobSpec("job", workers))
    body["spec"]["resources"] = {"gpus": 8, "gpuProduct": NODE_LOSS_PRODUCT}
    rank = min(rank, workers - 1)
    try:
        with PodWatch(ctx.api, ns, subject.job_label) as w:
            custom.create_namespaced_custom_object(*kube.TJ[:2], ns, kube.TJ[2], body)
            w.wait(lambda pods: gang_running_at(list(pods.values()), workers), ctx.timeout, "first gang Running")
            victim = ctx.core.read_namespaced_pod(subject.rank_pod("job", rank), ns).spec.node_name
            calls0 = kube.api_writes(ctx.api)
            win = procstat.Window(subject.pid).start()
            t0 = time.monotonic()
            ctx.core.delete_node(victim)
            at = w.wait(
                lambda pods: gang_running_at(list(pods.values()), workers, t0), ctx.timeout, "replacement gang Running"
            )
            win.stop()
            pods = w.snapshot()
        old = [p for p in pods if p.created < t0]
        replaced = [p for p in pods if p.created >= t0]
        events = ctx.core.list_namespaced_event(ns).items
        result = {
            "recovered_s": at - t0,
            "first_delete_s": _since(min((p.deleted for p in old if p.deleted is not None), default=None), t0),
            "old_pods_gone_s": _since(max((p.deleted for p in old if p.deleted is not None), default=None), t0),
            "pods_replaced": len(replaced),
            "replacement_created_s": _since(max_time(replaced, "created"), t0),
            "node_lost_events": sum(1 for e in events if e.reason == "NodeLost" and victim in (e.message or "")),
            **_footprint(win),
            "api_writes": kube.delta(kube.api_writes(ctx.api), calls0),
            "verified": verify(ctx, subject, ns, {"job": workers}),
            "errors": [],
        }
    finally:
        ctx.cleanup(ns)
        delete_nodes(ctx.core, nodes)
    return result


# --- footprint at scale --------------------------------------------------------------------------
def footprint(ctx: Ctx, subject: Subject, steps: list[int], workers: int, idle_seconds: float) -> list[dict[str, Any]]:
    """Grow to each job count in `steps` (all Running): CPU seconds per added job, RSS, and idle CPU
    (share of one core) with that many live jobs."""
    assert subject.client is not None
    ns = ctx.namespace(f"scale-{subject.name}")
    rows: list[dict[str, Any]] = []
    have = 0
    nerr = len(subject.client.errors)
    try:
        with PodWatch(ctx.api, ns, subject.job_label) as w:
            for target in steps:
                add = [JobSpec(f"job-{i:05d}", workers) for i in range(have, target)]
                win = procstat.Window(subject.pid).start()
                t0 = time.monotonic()
                for s in add:
                    subject.submit(ns, s)
                total = target * workers
                w.wait(functools.partial(_at_least, n=total), ctx.timeout, f"{total} pods Running")
                ran = time.monotonic() - t0
                procstat.wait_quiet(subject.pid, threshold=0.10, window=2.0, timeout=60)
                win.stop()
                have = target
                idle = procstat.Window(subject.pid).start()
                time.sleep(idle_seconds)
                idle.stop()
                rows.append(
                    {
                        "jobs": target,
                        "jobs_added": len(add),
                        "all_running_s": ran,
                        "cpu_seconds": win.cpu,
                        "cpu_ms_per_added_job": 1000 * win.cpu / max(len(add), 1),
                        "rss_mib": procstat.rss_mib(subject.pid),
                        "peak_rss_mib": win.peak_mib,
                        "idle_cpu_pct_of_core": 100 * idle.cpu / idle.seconds,
                    }
                )
                ctx.log(f"    {subject.name}: {target} jobs: {_fmt_row(rows[-1])}")
            v = verify(ctx, subject, ns, {f"job-{i:05d}": workers for i in range(have)})
            for r in rows:
                r["verified"] = v if r is rows[-1] else None
            rows[-1]["errors"] = _errors(subject, nerr)
    finally:
        ctx.cleanup(ns)
    return rows


# --- helpers -------------------------------------------------------------------------------------
def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def _footprint(win: procstat.Window) -> dict[str, float]:
    return {"cpu_seconds": win.cpu, "peak_rss_mib": win.peak_mib}


def _fmt_row(r: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in r.items() if isinstance(v, float | int) and not isinstance(v, bool))
