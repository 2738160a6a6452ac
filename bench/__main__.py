"""`python -m bench [SCENARIO ...] [options]` (or `make bench`): run the benchmark suite.

Scenarios: start, throughput, sustained, recovery, nodeloss, footprint (default: all, in that order;
nodeloss runs phalanx only). The
benchmarks of other areas can be run by name too (trainer_overhead, scheduling, operator_metrics, failover,
inplace):
they are handed the remaining arguments as `python -m bench.NAME ...`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench  # noqa: F401  (puts operator/ and dev/ on sys.path)
from bench import REPO, kube, kubeflow, procstat, report, scenarios
from bench.subjects import SUBJECTS, Phalanx, Subject

OURS = ("start", "throughput", "sustained", "recovery", "nodeloss", "footprint")
OTHERS = ("trainer_overhead", "scheduling", "operator_metrics", "failover", "inplace")
LOWER = False  # for rows where a higher number is better


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("scenarios", nargs="*", help=f"any of {', '.join(OURS + OTHERS)} (default: {' '.join(OURS)})")
    p.add_argument("--subjects", default="baseline,phalanx,kubeflow", help="comma list (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (default: %(default)s)")
    p.add_argument("--throughput-repeats", type=int, help="repeats of the 500-job burst (default: --repeats)")
    p.add_argument("--nodes", type=int, default=1000, help="simulated 8-GPU nodes (default: %(default)s)")
    p.add_argument("--sizes", default="1,16,64,256", help="job start: workers per job (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=500, help="throughput: jobs at once (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="workers per job, throughput/sustained/footprint")
    p.add_argument("--sustain-seconds", type=float, default=180, help="sustained: window (default: %(default)s)")
    p.add_argument("--rates", help="sustained: comma list of jobs/s to try, highest first (default: from burst)")
    p.add_argument("--pod-seconds", type=int, default=20, help="sustained: each pod runs this long")
    p.add_argument("--recovery-workers", type=int, default=64, help="recovery: job size (default: %(default)s)")
    p.add_argument("--nodeloss-workers", type=int, default=16, help="nodeloss: job size (default: %(default)s)")
    p.add_argument("--scale-steps", default="100,250,500,1000", help="footprint: live job counts")
    p.add_argument("--footprint-subjects", default="phalanx", help="footprint: who (default: %(default)s)")
    p.add_argument("--idle-seconds", type=float, default=30, help="footprint: idle window per step")
    p.add_argument("--concurrency", type=int, default=16, help="client-side API concurrency, every subject")
    p.add_argument("--phalanx-workers", type=int, default=8, help="PHALANX_WORKERS (default: the operator's, 8)")
    p.add_argument("--kubeconfig", type=Path, help="use this running cluster instead of starting one")
    p.add_argument("--cluster-dir", type=Path, help="state dir of the cluster started (default: OUT/cluster)")
    p.add_argument("--keep-cluster", action="store_true", help="leave the started cluster running")
    p.add_argument("--build-kubeflow", action="store_true", help="build Kubeflow's operator if not cached")
    p.add_argument("--out", type=Path, default=REPO / "bench-results", help="results dir (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=900, help="per-measurement timeout, seconds")
    return p.parse_args(argv)


class LoadSampler(threading.Thread):
    """Busy share of all cores and the load average, every 5 s, for the whole run."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="load")
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, busy fraction, loadavg1)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            busy = procstat.machine_busy_fraction(5.0)
            self.samples.append((time.monotonic(), busy, os.getloadavg()[0]))

    def between(self, t0: float, t1: float) -> dict[str, float | None]:
        inside = [(b, la) for t, b, la in self.samples if t0 <= t <= t1 + 5]
        if not inside:
            return {"busy_pct_median": None, "loadavg1_median": None}
        return {
            "busy_pct_median": round(100 * statistics.median(b for b, _ in inside), 1),
            "loadavg1_median": round(statistics.median(la for _, la in inside), 2),
        }


class Runner:
    def __init__(self, args: argparse.Namespace, ctx: scenarios.Ctx, subjects: list[str], log_dir: Path) -> None:
        self.args, self.ctx, self.subjects, self.log_dir = args, ctx, subjects, log_dir
        self.rows: list[dict[str, Any]] = []
        self.raw: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.load = LoadSampler()
        self.windows: dict[str, dict[str, Any]] = {}

    def log(self, msg: str) -> None:
        self.ctx.log(msg)

    def subject(self, name: str) -> Subject:
        s = SUBJECTS[name](kubeconfig=self.ctx.kubeconfig, logs=self.log_dir, concurrency=self.args.concurrency)
        if isinstance(s, Phalanx):
            s.workers = self.args.phalanx_workers
        t = time.monotonic()
        s.start()
        self.settings.setdefault(name, s.settings)
        self.log(f"  [{name}] started in {time.monotonic() - t:.1f}s")
        return s

    def each(self, names: list[str], fn: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            s = self.subject(name)
            try:
                out[name] = fn(s)
            finally:
                s.stop()
        return out

    def add_rows(
        self, scenario: str, runs: dict[str, list[dict[str, Any]]], metrics: list[tuple[str, str, str, bool]]
    ) -> None:
        """metrics: (key, label, unit, lower_is_better)."""
        agg = {s: report.aggregate(r, [m[0] for m in metrics]) for s, r in runs.items()}
        for key, label, unit, lower in metrics:
            row: dict[str, Any] = {"scenario": scenario, "metric": label, "unit": unit, "key": key}
            for s in runs:
                row[s] = agg[s].get(key)
            ph = row.get("phalanx")
            for other in ("baseline", "kubeflow"):
                o = row.get(other)
                row[f"ratio_{other}"] = report.ratio(ph, o) if lower else report.ratio(o, ph)
            self.rows.append(row)
        for s, a in agg.items():
            if not a["verified_ok"] or a["errors"]:
                self.log(f"  !! {scenario} {s}: verified={a['verified_ok']} errors={a['errors'][:3]}")
        self.raw.setdefault(scenario, {}).update({s: {"runs": runs[s], "verified_ok": agg[s]["verified_ok"],
                                                       "errors": agg[s]["errors"]} for s in runs})  # fmt: skip

    # --- scenarios -------------------------------------------------------------------------------
    def start(self) -> None:
        sizes = [int(x) for x in self.args.sizes.split(",")]
        runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rep in range(self.args.repeats):
            for name in self.subjects:
                s = self.subject(name)
                try:
                    for n in sizes:
                        r = scenarios.job_start(self.ctx, s, n)
                        runs.setdefault((n, name), []).append(r)
                        self.log(f"  start rep {rep + 1} {name} {n} workers: running {r['running_s']:.2f}s")
                finally:
                    s.stop()
        for n in sizes:
            self.add_rows(
                f"job start {n}w",
                {name: runs.get((n, name), []) for name in self.subjects},
                [
                    ("created_s", "all pods created", "s", True),
                    ("bound_s", "all pods bound", "s", True),
                    ("running_s", "all pods Running", "s", True),
                    ("cpu_seconds", "CPU", "s", True),
                    ("peak_rss_mib", "peak RSS", "MiB", True),
                ],
            )

    def throughput(self) -> None:
        reps = self.args.throughput_repeats or self.args.repeats
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in self.subjects}
        for rep in range(reps):
            for name in self.subjects:
                s = self.subject(name)
                try:
                    r = scenarios.throughput(self.ctx, s, self.args.jobs, self.args.workers)
                finally:
                    s.stop()
                runs[name].append(r)
                self.log(
                    f"  throughput rep {rep + 1} {name}: {r['all_running_s']:.1f}s, {r['jobs_per_s']:.2f} jobs/s "
                    f"(cleanup {r['cleanup_s']:.0f}s)"
                )
        self.add_rows(
            f"throughput {self.args.jobs}x{self.args.workers}w",
            runs,
            [
                ("all_running_s", "all jobs Running", "s", True),
                ("jobs_per_s", "jobs/s", "/s", LOWER),
                ("job_latency_p50_s", "job latency p50", "s", True),
                ("job_latency_p95_s", "job latency p95", "s", True),
                ("cpu_seconds", "CPU", "s", True),
                ("peak_rss_mib", "peak RSS", "MiB", True),
            ],
        )

    def sustained(self) -> None:
        a = self.args
        burst = {
            s: (row.get(s) or {}).get("median")
            for row in self.rows
            if row["key"] == "jobs_per_s"
            for s in self.subjects
        }
        results: dict[str, list[dict[str, Any]]] = {}
        for name in self.subjects:
            if a.rates:
                ladder = [float(x) for x in a.rates.split(",")]
            else:
                top = burst.get(name) or 4.0
                ladder = [round(top * f, 2) for f in (1.0, 0.75, 0.5, 0.25)]
            s = self.subject(name)
            tried: list[dict[str, Any]] = []
            try:
                queue = list(ladder)
                while queue:
                    rate = queue.pop(0)
                    r = scenarios.sustained(self.ctx, s, rate, a.sustain_seconds, a.workers, a.pod_seconds)
                    tried.append(r)
                    self.log(
                        f"  sustained {name} {rate:.2f} jobs/s for {a.sustain_seconds:.0f}s: held={r['held']} "
                        f"backlog mid/last {r['backlog_mid_median']}/{r['backlog_last_median']}, "
                        f"p95 {r['job_latency_p95_s']}"
                    )
                    if r["held"] and len(tried) == 1 and not a.rates:
                        # The first (highest) rung held: the limit lies above it; climb until one fails.
                        queue = [round(rate * 1.25, 2)] if len(tried) < 4 else []
                        ladder = []
                    elif r["held"] and not ladder and not a.rates and len(tried) < 4:
                        queue = [round(rate * 1.25, 2)]
                    elif r["held"]:
                        break
                    elif not ladder:
                        break  # climbing: the previous rung was the highest held
            finally:
                s.stop()
            held = [r for r in tried if r["held"]]
            best = max(held, key=lambda r: r["rate_jobs_per_s"]) if held else None
            results[name] = [{"held_rate": best["rate_jobs_per_s"] if best else 0.0,
                              "job_latency_p95_s": best["job_latency_p95_s"] if best else None,
                              "cpu_per_job_ms": 1000 * best["cpu_seconds"] / best["jobs"] if best else None,
                              "tried": tried}]  # fmt: skip
        self.add_rows(
            f"sustained {a.sustain_seconds:.0f}s",
            results,
            [
                ("held_rate", "highest rate held", " jobs/s", LOWER),
                ("job_latency_p95_s", "job latency p95 at it", "s", True),
                ("cpu_per_job_ms", "CPU per job", "ms", True),
            ],
        )

    def recovery(self) -> None:
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in self.subjects}
        for rep in range(self.args.repeats):
            for name in self.subjects:
                s = self.subject(name)
                try:
                    r = scenarios.recovery(self.ctx, s, self.args.recovery_workers)
                finally:
                    s.stop()
                runs[name].append(r)
                self.log(f"  recovery rep {rep + 1} {name}: {r['recovered_s']:.2f}s ({r['pods_replaced']} pods new)")
        self.add_rows(
            f"recovery {self.args.recovery_workers}w",
            runs,
            [
                ("recovered_s", "replacement gang Running", "s", True),
                ("first_delete_s", "first pod deleted", "s", True),
                ("old_pods_gone_s", "old gang gone", "s", True),
                ("pods_replaced", "pods recreated", "", True),
                ("cpu_seconds", "CPU", "s", True),
                ("peak_rss_mib", "peak RSS", "MiB", True),
            ],
        )

    def nodeloss(self) -> None:
        """phalanx only: the others leave pods of a lost node to the pod garbage collector alike."""
        if "phalanx" not in self.subjects:
            self.log("  nodeloss: phalanx is not among the subjects; skipped")
            return
        workers = self.args.nodeloss_workers
        runs: list[dict[str, Any]] = []
        for rep in range(self.args.repeats):
            s = self.subject("phalanx")
            try:
                r = scenarios.node_loss(self.ctx, s, workers)
            finally:
                s.stop()
            runs.append(r)
            self.log(
                f"  nodeloss rep {rep + 1}: replacement gang Running {r['recovered_s']:.2f}s after the node's "
                f"deletion (lost pod removed at {r['first_delete_s']}s, {r['node_lost_events']} NodeLost event)"
            )
        self.add_rows(
            f"node loss {workers}w",
            {"phalanx": runs},
            [
                ("recovered_s", "node deleted -> replacement gang Running", "s", True),
                ("first_delete_s", "first old pod removed", "s", True),
                ("old_pods_gone_s", "old gang gone", "s", True),
                ("cpu_seconds", "CPU", "s", True),
            ],
        )

    def footprint(self) -> None:
        steps = [int(x) for x in self.args.scale_steps.split(",")]
        who = [n for n in self.args.footprint_subjects.split(",") if n in self.subjects]
        out = self.each(
            who, lambda s: scenarios.footprint(self.ctx, s, steps, self.args.workers, self.args.idle_seconds)
        )
        self.raw["footprint"] = out
        for i, target in enumerate(steps):
            runs = {name: [rows[i]] for name, rows in out.items()}
            self.add_rows(
                f"footprint {target} jobs",
                runs,
                [
                    ("cpu_ms_per_added_job", "CPU per added job", "ms", True),
                    ("rss_mib", "RSS", "MiB", True),
                    ("idle_cpu_pct_of_core", "idle CPU", "% core", True),
                ],
            )


def run_others(names: list[str], rest: list[str]) -> int:
    rc = 0
    for name in names:
        mod = f"bench.{name}"
        if importlib.util.find_spec(mod) is None:
            print(f"bench: {mod} does not exist (yet); skipped", file=sys.stderr)
            rc = rc or 1
            continue
        rc = subprocess.call([sys.executable, "-m", mod, *rest], cwd=REPO) or rc
    return rc


def main(argv: list[str]) -> int:
    if argv and argv[0] in OTHERS:
        return run_others([argv[0]], argv[1:])
    args = parse(argv)
    chosen = args.scenarios or list(OURS)
    unknown = [s for s in chosen if s not in OURS + OTHERS]
    if unknown:
        print(f"bench: unknown scenario(s) {unknown}; choose from {', '.join(OURS + OTHERS)}", file=sys.stderr)
        return 2
    rc = run_others([s for s in chosen if s in OTHERS], [])
    chosen = [s for s in chosen if s in OURS]
    if not chosen:
        return rc
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out.resolve()
    log_dir = out / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = (out / f"bench-{stamp}.log").open("a")

    def log(msg: str) -> None:
        line = f"[{dt.datetime.now():%H:%M:%S}] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    started = time.monotonic()
    cluster_dir: Path | None = None
    if args.kubeconfig:
        kubeconfig = args.kubeconfig.resolve()
        log(f"using the running cluster of {kubeconfig}")
    else:
        import localcluster

        cluster_dir = (args.cluster_dir or out / "cluster").resolve()
        info = localcluster.up("scale", cluster_dir, nodes=args.nodes, die_with_parent=not args.keep_cluster, log=log)
        kubeconfig = info.kubeconfig
    subjects = [s for s in args.subjects.split(",") if s]
    kubeflow_status = "not requested"
    try:
        ctx = scenarios.Ctx(kubeconfig, out, args.concurrency, log, args.timeout)
        for leftover in kube.bench_namespaces(ctx.core):
            log(f"deleting namespace {leftover} left by an earlier run")
            ctx.cleanup(leftover)
        kube.apply_crd(ctx.api, kube.PHALANX_CRD)
        if "kubeflow" in subjects:
            try:
                if args.build_kubeflow:
                    kubeflow.ensure_binary(log)
                if not kubeflow.binary().is_file():
                    raise kubeflow.KubeflowUnavailable(
                        f"{kubeflow.binary()} is not built; rerun with --build-kubeflow (needs Go and the module proxy)"
                    )
                kube.apply_crd(ctx.api, kubeflow.crd_path())
                kubeflow.prepare_cluster(ctx.api)
                kubeflow_status = f"ran: {kubeflow.MODULE} {kubeflow.VERSION}"
            except kubeflow.KubeflowUnavailable as exc:
                kubeflow_status = f"unavailable: {exc}"
                log(f"Kubeflow's training operator is left out: {exc}")
                subjects.remove("kubeflow")
        runner = Runner(args, ctx, subjects, log_dir)
        runner.load.start()
        failed: dict[str, str] = {}
        cols = [s for s in report.SUBJECT_ORDER if s in subjects]
        path = out / f"bench-{stamp}.json"

        def save() -> dict[str, Any]:
            data = {
                "started": stamp,
                "duration_s": round(time.monotonic() - started, 1),
                "scenarios": chosen,
                "failed": failed,
                "args": {k: str(v) for k, v in vars(args).items()},
                "machine": machine(),
                "load": runner.windows,
                "cluster": {"nodes": args.nodes, "kubeconfig": str(kubeconfig), "gpus_per_node": 8},
                "settings": {
                    "client_concurrency": args.concurrency,
                    "baseline": "same client concurrency as the operator; no QPS limiter (the python client has none)",
                    **runner.settings,
                },
                "kubeflow": kubeflow_status,
                "rows": runner.rows,
                "raw": runner.raw,
                "markdown": report.markdown(runner.rows, cols),
            }
            report.write_json(path, data)
            report.write_json(out / "latest.json", data)
            return data

        for name in chosen:
            log(f"== {name}")
            t0 = time.monotonic()
            try:
                getattr(runner, name)()
            except Exception as exc:  # one broken scenario must not lose the others' results
                failed[name] = f"{type(exc).__name__}: {exc}"
                log(f"!! {name} failed: {failed[name]}")
                rc = 1
            t1 = time.monotonic()
            runner.windows[name] = {"seconds": round(t1 - t0, 1), **runner.load.between(t0, t1)}
            log(f"== {name} done in {t1 - t0:.0f}s; machine: {runner.windows[name]}")
            save()
        runner.load.stop_event.set()
        text = report.table(runner.rows, cols)
        print(text)
        log_file.write(text + "\n")
        save()
        log(f"results: {path} (whole run {time.monotonic() - started:.0f}s)")
    finally:
        if cluster_dir is not None and not args.keep_cluster:
            import localcluster

            localcluster.down(cluster_dir, log=log)
        log_file.close()
    return rc


def machine() -> dict[str, Any]:
    mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    model = next(
        (x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x),
        "?",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
