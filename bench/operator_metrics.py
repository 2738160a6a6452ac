"""Operator CPU while trainer metrics flow: N Running TrainingJobs of W workers, scraped by the operator.

    python -m bench.operator_metrics [--jobs 200] [--workers 8] [--seconds 120] [--kubeconfig PATH]

What runs: the local control plane (scale profile, or --kubeconfig to reuse one), the operator as its
own process with its production telemetry settings (15 s per job, 60 s window), N jobs of W pods made
Running by kwok. The trainers are fake: one small HTTP server (its own process, not counted) bound to
0.0.0.0 answers on every pod's address -- each pod's status.podIP is patched to its own 127.x.y.z --
with the real trainer runtime's exposition (process metrics and histograms included, ~5 kB), its
counters growing at a per-pod rate, so the operator computes real rates, efficiencies and updates.

Measured, in steady state, twice on the same cluster and jobs: the operator process with
PHALANX_TELEMETRY=off, then with scraping on. Reported: operator CPU (share of one core), the
difference (what scraping and summarizing cost), per job, scrapes/s, status updates/s caused by
telemetry, scrape latency, and RSS. Prints a markdown table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bench  # noqa: F401  (puts operator/ and dev/ on sys.path)
from bench import REPO, kube, procstat
from bench.workloads import pytorch_training_job
from localcluster import process
from localcluster.testing import wait_for

NAMESPACE = "bench-metrics"
SERVER = r"""
import sys, time
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.process_collector import ProcessCollector
from phalanx_trainer.metrics import TrainerMetrics

port, workers = int(sys.argv[1]), int(sys.argv[2])
m = TrainerMetrics()
ProcessCollector(registry=m.registry)
m.set_identity(world_size=workers, rank=0, attempt=1, procs_per_pod=1)
for _ in range(100):
    m.observe_step(0.25, 32)
m.observe_checkpoint(100, 1.5)
# The real exposition, with the numbers the operator reads turned into placeholders.
template = generate_latest(m.registry).decode()
for name, key in (("phalanx_trainer_samples_total", "{samples}"), ("phalanx_trainer_steps_total", "{steps}")):
    lines = template.splitlines()
    template = "\n".join(f"{name} {key}" if line.startswith(name + " ") else line for line in lines) + "\n"
template = template.replace("{", "{{").replace("}", "}}")
template = template.replace("{{samples}}", "{samples}").replace("{{steps}}", "{steps}")
t0 = time.time()

async def metrics(request):
    host = request.transport.get_extra_info("sockname")[0]
    last = int(host.rsplit(".", 1)[1])
    rate = 128.0 * (1 - 0.002 * (last % 10))  # ~128 samples/s per pod, small per-pod spread
    elapsed = time.time() - t0
    text = template.format(samples=rate * elapsed + 1e5, steps=(rate * elapsed + 1e5) / 32)
    return web.Response(text=text, content_type="text/plain")

app = web.Application()
app.router.add_get("/metrics", metrics)
web.run_app(app, host="0.0.0.0", port=port, print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def pod_ip(job: int, worker: int, workers: int) -> str:
    """A distinct loopback address per pod, 127.10.0.1 upwards (127.0.0.x is left alone)."""
    n = job * workers + worker
    return f"127.{10 + n // 65025}.{(n // 255) % 255}.{n % 255 + 1}"


def job_body(name: str, workers: int, port: int) -> dict[str, Any]:
    return pytorch_training_job(
        name,
        workers,
        metrics={"port": port},
        scheduling={"gang": False},  # setup speed: admission is not what is measured here
        template={
            "spec": {
                "containers": [{"name": "trainer", "image": "trainer:bench", "command": ["python", "-m", "x"]}],
                "tolerations": [{"operator": "Exists"}],
            }
        },
    )


def operator_metrics(port: int) -> dict[str, float]:
    """Each operator series (name{labels}) and, under the bare name, the sum over its labels."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                name = series.split("{")[0]
                out[name] = out.get(name, 0.0) + float(value)
                if series != name:
                    out[series] = float(value)
    return out


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, telemetry: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "trainers")),
            "PHALANX_OPERATOR_METRICS_PORT": str(self.port),
            "PHALANX_TELEMETRY": telemetry,
        }
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def metrics(self) -> dict[str, float]:
        return operator_metrics(self.port)

    def stop(self) -> None:
        process.end(self.proc)
        self.log.close()


def settle(op: OperatorProcess, jobs: int, quiet: float = 15.0, timeout: float = 600.0) -> float:
    """Wait until the operator's start-up pass is done: every job reconciled once (kopf fills its caches
    first, so this can take a while), then fewer than 3 reconciles in `quiet` seconds."""
    started = time.monotonic()
    count = "phalanx_operator_reconcile_duration_seconds_count"
    wait_for(lambda: op.metrics().get(count, 0.0) >= jobs, timeout, 2.0, f"{jobs} start-up reconciles")
    while time.monotonic() - started < timeout:
        before = op.metrics().get("phalanx_operator_reconcile_duration_seconds_count", 0.0)
        time.sleep(quiet)
        if op.metrics().get("phalanx_operator_reconcile_duration_seconds_count", 0.0) - before < 3:
            break
    return time.monotonic() - started


def measure(op: OperatorProcess, jobs: int, seconds: float, warmup: float) -> dict[str, Any]:
    settled = settle(op, jobs)
    time.sleep(warmup)
    before, window = op.metrics(), procstat.Window(op.proc.pid).start()
    time.sleep(seconds)
    window.stop()
    after = op.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    scrapes = delta("phalanx_operator_trainer_scrapes_total")
    return {
        "settled_after_s": round(settled, 1),
        **window.to_json(),
        "cpu_share_of_one_core": round(window.cpu / window.seconds, 4),
        "rss_mib": round(procstat.rss_mib(op.proc.pid), 1),
        "reconciles_per_s": round(delta("phalanx_operator_reconcile_duration_seconds_count") / window.seconds, 2),
        "scrapes_per_s": round(scrapes / window.seconds, 2),
        "scrape_failures": scrapes - delta('phalanx_operator_trainer_scrapes_total{result="ok"}'),
        "mean_scrape_ms": round(1000 * delta("phalanx_operator_trainer_scrape_duration_seconds_sum") / scrapes, 2)
        if scrapes
        else None,
        "telemetry_updates_per_s": round(delta("phalanx_operator_telemetry_updates_total") / window.seconds, 3),
        "jobs_scraped": after.get("phalanx_operator_trainer_scrape_jobs", 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.operator_metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=120.0, help="measured window per mode")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds after the operator settled")
    p.add_argument("--kubeconfig", type=Path, help="reuse this cluster instead of starting one")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    from kubernetes.client import CoreV1Api, CustomObjectsApi

    import localcluster

    tmp = Path(tempfile.mkdtemp(prefix="phalanx-bench-metrics-"))
    cluster = None
    if args.kubeconfig is None:
        nodes = max(2, args.jobs * args.workers // 100 + 1)
        print(f"starting the local control plane (scale profile, {nodes} nodes) in {tmp}", flush=True)
        cluster = localcluster.up("scale", tmp / "cluster", nodes=nodes, die_with_parent=True, log=lambda *_: None)
        kubeconfig = cluster.kubeconfig
    else:
        kubeconfig = args.kubeconfig
    api = kube.api_client(kubeconfig, concurrency=32)
    core, custom = CoreV1Api(api), CustomObjectsApi(api)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(args.workers)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "trainers"))},
    )
    operators: list[OperatorProcess] = []
    try:
        kube.apply_crd(api, kube.PHALANX_CRD)
        kube.create_namespace(core, NAMESPACE)
        creator = OperatorProcess(kubeconfig, tmp / "operator-setup.log", "off")
        operators.append(creator)
        names = [f"m{i:04d}" for i in range(args.jobs)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            group, version, plural = kube.TJ
            bodies = [job_body(n, args.workers, port) for n in names]
            list(
                pool.map(lambda b: custom.create_namespaced_custom_object(group, version, NAMESPACE, plural, b), bodies)
            )

        def running_pods() -> list[Any]:
            pods = core.list_namespaced_pod(NAMESPACE, label_selector="phalanx.dev/job-name").items
            return [p for p in pods if p.status.phase == "Running"]

        total = args.jobs * args.workers
        wait_for(lambda: len(running_pods()) >= total, 1800, 2.0, f"{total} running pods")
        print(
            f"{total} pods running after {time.monotonic() - t0:.0f}s; pointing them at the fake trainers", flush=True
        )

        def point(pod: Any) -> None:
            job = names.index(pod.metadata.labels["phalanx.dev/job-name"])
            ip = pod_ip(job, int(pod.metadata.labels["phalanx.dev/replica-index"]), args.workers)
            patch = [
                {"op": "replace", "path": "/status/podIP", "value": ip},
                {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]},
            ]
            core.patch_namespaced_pod_status(pod.metadata.name, NAMESPACE, patch)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(point, running_pods()))

        def all_running() -> bool:
            items = custom.list_namespaced_custom_object(*kube.TJ[:2], NAMESPACE, kube.TJ[2])["items"]
            return sum((j.get("status") or {}).get("state") == "Running" for j in items) >= args.jobs

        wait_for(all_running, 600, 2.0, f"{args.jobs} Running jobs")
        creator.stop()
        operators.remove(creator)

        results: dict[str, Any] = {
            "jobs": args.jobs,
            "workers_per_job": args.workers,
            "pods": total,
            "cores": os.cpu_count(),
            "load_average_at_start": procstat.machine_load(),
        }
        for mode in ("off", "scrape"):
            op = OperatorProcess(kubeconfig, tmp / f"operator-{mode}.log", mode)
            operators.append(op)
            wait_for(lambda op=op: _reachable(op), 120, 1.0, "operator metrics endpoint")
            if mode == "scrape":

                def summarized() -> bool:
                    items = custom.list_namespaced_custom_object(*kube.TJ[:2], NAMESPACE, kube.TJ[2])["items"]
                    done = [
                        j for j in items if ((j.get("status") or {}).get("throughput") or {}).get("samplesPerSecond")
                    ]
                    return len(done) >= args.jobs

                wait_for(summarized, 300, 2.0, "every job's throughput in status")
                items = custom.list_namespaced_custom_object(*kube.TJ[:2], NAMESPACE, kube.TJ[2])["items"]
                results["example_status_throughput"] = items[0]["status"]["throughput"]
            print(f"measuring the operator with PHALANX_TELEMETRY={mode} for {args.seconds:.0f}s", flush=True)
            results[mode] = measure(op, args.jobs, args.seconds, args.warmup)
            op.stop()
            operators.remove(op)
        on, off = results["scrape"], results["off"]
        cost = on["cpu_share_of_one_core"] - off["cpu_share_of_one_core"]
        results["telemetry_cpu_share_of_one_core"] = round(cost, 4)
        results["telemetry_cpu_ms_per_job_per_second"] = round(1000 * cost / args.jobs, 4)
        results["load_average_at_end"] = procstat.machine_load()
        print(report(results))
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for op in operators:
            op.stop()
        server.terminate()
        server.wait()
        if cluster is not None:
            localcluster.down(tmp / "cluster", log=lambda *_: None)


def _reachable(op: OperatorProcess) -> bool:
    try:
        op.metrics()
        return True
    except OSError:
        return False


def report(r: dict[str, Any]) -> str:
    rows = [
        ("operator CPU, share of one core", "cpu_share_of_one_core"),
        ("operator RSS (MiB)", "rss_mib"),
        ("reconciles/s", "reconciles_per_s"),
        ("trainer scrapes/s", "scrapes_per_s"),
        ("mean scrape (ms, wall, incl. parse)", "mean_scrape_ms"),
        ("failed scrapes in the window", "scrape_failures"),
        ("status updates from telemetry /s", "telemetry_updates_per_s"),
    ]
    lines = [
        f"{r['jobs']} Running jobs x {r['workers_per_job']} workers = {r['pods']} pods, {r['cores']} cores",
        "",
        "| | telemetry off | telemetry on (scrape) |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {r['off'][key]} | {r['scrape'][key]} |" for label, key in rows]
    lines += [
        "",
        f"scraping and summarizing: {100 * r['telemetry_cpu_share_of_one_core']:.1f} % of one core, "
        f"{r['telemetry_cpu_ms_per_job_per_second']} ms CPU per job per second",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
