"""Scheduling benchmark (not a test): what gang admission costs and how fast a big gang starts.

`python -m bench scheduling [memory] [gang] [queue] [native] [--repeats N] [--queue-repeats N] [--nodes 100]
 [--kubeconfig PATH] [--dir DIR] [--json PATH]`

memory  The admission pass over in-memory caches, no API involved (what the operator does per decision):
        - decide() on 100 nodes of 8 GPUs with 500 queued gangs: the cluster full (all wait) and empty
          (100 admitted, 400 wait);
        - Admitter.admit_once() over fake kopf indexes holding 500 queued jobs and their 1000 gated
          pods, beside 1000 running jobs of 1, 8 and 64 pods (up to 65000 pods cached) and 5000 of 8:
          the pass must not grow with the pods of jobs that do not wait.
gang    On a simulated 100-node cluster (scale profile; started here unless --kubeconfig), phalanx as
        its own process: from creating one 64-worker x 8-GPU TrainingJob to all 64 pods created,
        admitted (the first pod bound), all bound by kube-scheduler, and all Running (kwok).
queue   The same cluster: 500 queued 1 x 8-GPU jobs behind one job holding every GPU; from the end of
        that job's pods to every node refilled by a queued job (100 admissions and bindings).
native  The gang measurement with spec.scheduling.gangBackend PodGroup: Kubernetes 1.36's native gang
        scheduling (a Workload and a PodGroup, then ungated pods the kube-scheduler binds all or none)
        instead of phalanx's gates (the scale profile has the feature gates on).

Medians (and min/max) over --repeats. Results print as a markdown table and JSON (--json PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench  # noqa: F401  (puts operator/ and dev/ on sys.path)
from bench import REPO
from bench.workloads import pytorch_training_job
from phalanx.controller.admitter import Admitter
from phalanx.core import names
from phalanx.core.admission import GPU, PRODUCT_LABEL, GangDemand, NodeView, Usage, decide
from phalanx.core.observe import pod_view

H100 = "NVIDIA-H100-80GB-HBM3"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --- memory ----------------------------------------------------------------------------------------


def nodes(n: int) -> list[NodeView]:
    return [NodeView(f"gpu-{i}", {GPU: 8}, {PRODUCT_LABEL: H100}, frozenset({GPU})) for i in range(n)]


def gangs(n: int, pods: int) -> list[GangDemand]:
    return [
        GangDemand(("bench", f"q{i}"), 0, T0 + timedelta(seconds=i), pods, {GPU: 8}, {}, frozenset({GPU}))
        for i in range(n)
    ]


class _Kube:
    async def ungate_pod(self, namespace: str, name: str, also: list[dict[str, Any]] | None = None) -> None:
        return None


class FakeOperator:
    """The parts of phalanx.controller.operator.Operator the Admitter reads, over plain dicts shaped
    like kopf indexes (key -> list of values)."""

    def __init__(self, n_nodes: int) -> None:
        self.leading = True  # the only replica
        self.kube = _Kube()
        self.indices: dict[str, dict[Any, list[Any]]] = {
            "job_index": {},
            "pod_index": {},
            "node_index": {n.name: [n] for n in nodes(n_nodes)},
            "usage_index": {},
        }

    def add_job(self, name: str, replicas: int, state: str, created: int) -> None:
        self.indices["job_index"][("bench", name)] = [
            {
                "metadata": {
                    "name": name,
                    "namespace": "bench",
                    "uid": f"uid-{name}",
                    "generation": 1,
                    "resourceVersion": "1",
                    "creationTimestamp": (T0 + timedelta(seconds=created)).isoformat(),
                },
                "spec": {
                    "framework": "pytorch",
                    "replicas": replicas,
                    "resources": {"gpus": 8},
                    "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}},
                },
                "status": {"attempt": 1, "state": state},
            }
        ]
        entries = []
        for i in range(replicas):
            gated = state != "Running"
            body = {
                "metadata": {
                    "name": f"{name}-worker-{i}",
                    "labels": {names.LABEL_JOB: name, names.LABEL_INDEX: str(i), names.LABEL_ATTEMPT: "1"},
                },
                "spec": {"schedulingGates": [{"name": names.GANG_GATE}]} if gated else {"nodeName": "gpu-0"},
                "status": {"phase": "Pending" if gated else "Running"},
            }
            entries.append({"view": pod_view(body), "owner": f"uid-{name}"})
        self.indices["pod_index"][("bench", name)] = entries

    def pods_of(self, key: tuple[str, str], uid: str) -> list[Any]:
        return [e["view"] for e in self.indices["pod_index"].get(key, []) if e["owner"] == uid]

    def priority(self, class_name: str | None) -> int:
        return 0

    def enqueue(self, key: tuple[str, str]) -> None:
        return None


def admission_passes(op: FakeOperator, repeats: int) -> list[float]:
    admitter = Admitter(op)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(admitter.admit_once())  # the first pass parses the jobs; later ones hit the cache
        return timed(lambda: loop.run_until_complete(admitter.admit_once()), repeats)
    finally:
        loop.close()


def memory(repeats: int, n_nodes: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    queue = gangs(500, 2)
    full = [Usage(f"gpu-{i}", {GPU: 8}) for i in range(n_nodes)]
    results["decide_full"] = summary(timed(lambda: decide(nodes(n_nodes), full, [], queue), repeats))
    singles = gangs(500, 1)
    results["decide_empty"] = summary(timed(lambda: decide(nodes(n_nodes), [], [], singles), repeats))
    # The same 500 queued jobs beside running jobs: more pods per running job (cost must not move),
    # then more running jobs (one dict check each).
    for running, per_job in ((0, 0), (1000, 1), (1000, 8), (1000, 64), (5000, 8)):
        op = FakeOperator(n_nodes)
        for i in range(running):
            op.add_job(f"r{i}", per_job, "Running", i)
        for i in range(500):
            op.add_job(f"q{i}", 2, "Queued", running + i)
        op.indices["usage_index"] = {("bench", f"u{i}"): [Usage(f"gpu-{i}", {GPU: 8})] for i in range(n_nodes)}
        pods = sum(len(v) for v in op.indices["pod_index"].values())
        results[f"admit_once_{running}x{per_job}"] = {
            **summary(admission_passes(op, repeats)),
            "running_jobs": running,
            "pods_in_cache": pods,
        }
    return results


# --- live ------------------------------------------------------------------------------------------


def tj(name: str, replicas: int, backend: str = "Gates") -> dict[str, Any]:
    return pytorch_training_job(
        name,
        replicas,
        resources={"gpus": 8},
        scheduling={"gangBackend": backend},
        template={"spec": {"containers": [{"name": "trainer", "image": "trainer:bench"}]}},
    )


class Live:
    """A scale cluster (started here unless a kubeconfig is given) with phalanx as its own process."""

    def __init__(self, n_nodes: int, kubeconfig: Path | None, directory: Path) -> None:
        import kubernetes

        import localcluster
        from bench import kube
        from bench.subjects import Phalanx

        self.started_here = kubeconfig is None
        self.directory = directory
        if kubeconfig is None:
            info = localcluster.up(
                "scale", directory / "cluster", nodes=n_nodes, log=lambda s: print(s, file=sys.stderr)
            )
            kubeconfig = info.kubeconfig
        self.api = kube.api_client(kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        kube.apply_crd(self.api, kube.PHALANX_CRD)
        self.nodes = len(self.core.list_node().items)
        self.subject = Phalanx(kubeconfig, directory / "logs")
        self.subject.logs.mkdir(parents=True, exist_ok=True)
        self.subject.start_controller()

    def create(self, ns: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("phalanx.dev", "v1alpha1", ns, "trainingjobs", body)

    def namespace(self, prefix: str) -> str:
        from bench import kube

        return kube.create_namespace(self.core, f"{prefix}-{time.time_ns() % 10**9}")

    def drop(self, ns: str) -> None:
        from bench import kube

        self.custom.delete_collection_namespaced_custom_object("phalanx.dev", "v1alpha1", ns, "trainingjobs")
        self.core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
        kube.delete_namespace(self.core, ns)

    def close(self) -> None:
        self.subject.stop()
        if self.started_here:
            import localcluster

            localcluster.down(self.directory / "cluster", log=lambda s: print(s, file=sys.stderr))


def big_gang(live: Live, repeats: int, workers: int = 64, backend: str = "Gates") -> dict[str, Any]:
    """Create one workers x 8-GPU job; time all pods created, first bound (admitted), all bound, all Running.
    backend: spec.scheduling.gangBackend, Gates (phalanx lifts its gates) or PodGroup (the kube-scheduler)."""
    from bench.watch import PodWatch

    stages: dict[str, list[float]] = {"created": [], "admitted": [], "bound": [], "running": []}
    for r in range(repeats + 1):  # the first round warms the operator up and is not counted
        ns = live.namespace("bench-gang")
        with PodWatch(live.api, ns, names.LABEL_JOB) as watch:
            t0 = time.monotonic()
            live.create(ns, tj("big", workers, backend))
            watch.wait(lambda p: len(p) == workers, 300, f"{workers} pods")
            watch.wait(lambda p: sum(1 for x in p.values() if x.running) == workers, 300, "all pods Running")
            pods = watch.snapshot()
        if r:
            bound = [p.bound for p in pods if p.bound]
            stages["created"].append(max(p.created for p in pods) - t0)
            stages["admitted"].append(min(bound) - t0)  # the gang is let go in one burst: first binding follows
            stages["bound"].append(max(bound) - t0)
            stages["running"].append(max(p.running for p in pods if p.running) - t0)
        live.drop(ns)
    return {k: summary(v) for k, v in stages.items()}


def queued(live: Live, repeats: int, jobs: int = 500) -> dict[str, Any]:
    """`jobs` 1 x 8-GPU jobs queued behind one job holding every GPU: from its end to every node refilled."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.watch import PodWatch

    n = live.nodes
    waits: list[float] = []
    for _ in range(repeats):
        ns = live.namespace("bench-queue")
        with PodWatch(live.api, ns, names.LABEL_JOB) as watch:
            live.create(ns, tj("all", n))
            watch.wait(lambda p: sum(1 for x in p.values() if x.running) == n, 300, "the job holding every GPU")
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i, ns=ns: live.create(ns, tj(f"q{i:03d}", 1)), range(jobs)))
            watch.wait(lambda p: len(p) == n + jobs, 900, f"{jobs} queued pods")
            time.sleep(15)  # the operator settles: every queued job has its note written
            t0 = time.monotonic()
            live.core.delete_collection_namespaced_pod(
                ns, label_selector=f"{names.LABEL_JOB}=all", grace_period_seconds=0
            )
            watch.wait(
                lambda p: sum(1 for x in p.values() if x.job != "all" and x.bound) >= n, 900, f"{n} queued jobs bound"
            )
            waits.append(max(x.bound for x in watch.snapshot() if x.job != "all" and x.bound) - t0)
        live.drop(ns)
    return {"jobs": jobs, "refill_all_nodes": summary(waits)}


def table(results: dict[str, Any]) -> str:
    rows = ["| measurement | median | min | max |", "|---|---|---|---|"]

    def ms(s: dict[str, float]) -> str:
        return f"| {{}} | {s['median'] * 1000:.1f} ms | {s['min'] * 1000:.1f} ms | {s['max'] * 1000:.1f} ms |"

    mem = results.get("memory", {})
    if mem:
        rows.append(ms(mem["decide_full"]).format("decide(): 100 nodes full, 500 queued gangs (all wait)"))
        rows.append(ms(mem["decide_empty"]).format("decide(): 100 nodes empty, 500 queued 1-pod gangs (100 admitted)"))
        for key, s in mem.items():
            if key.startswith("admit_once_"):
                rows.append(
                    ms(s).format(
                        f"admit_once(): 500 queued jobs + {s['running_jobs']} running jobs "
                        f"({s['pods_in_cache']} pods cached)"
                    )
                )
    lv = results.get("live", {})
    for key, how in (("gang_64x8", "gates"), ("native_64x8", "PodGroup")):
        if key not in lv:
            continue
        for stage, label in (
            ("created", f"64 x 8-GPU job ({how}): all pods created"),
            ("admitted", f"64 x 8-GPU job ({how}): admitted (first pod bound)"),
            ("bound", f"64 x 8-GPU job ({how}): all 64 pods bound"),
            ("running", f"64 x 8-GPU job ({how}): all 64 pods Running"),
        ):
            s = lv[key][stage]
            rows.append(f"| {label} | {s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s |")
    if "queue_500" in lv:
        s = lv["queue_500"]["refill_all_nodes"]
        rows.append(
            f"| 500 queued 1 x 8-GPU jobs: capacity freed -> {lv['nodes']} admitted and bound | "
            f"{s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s |"
        )
    return "\n".join(rows)


def save(path: Path | None, results: dict[str, Any]) -> None:
    """Write what was measured so far: a long run keeps its figures if it is cut short."""
    if path:
        path.write_text(json.dumps(results, indent=2, default=str))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench scheduling", description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", default=["memory", "gang", "queue", "native"],
                   help="memory, gang, queue, native (default: all)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--queue-repeats", type=int, default=1, help="rounds of the 500-queued-jobs measurement")
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--kubeconfig", type=Path, default=None, help="a running scale cluster (else one is started)")
    p.add_argument("--dir", type=Path, default=REPO / ".bench" / "scheduling")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    if "memory" in args.parts:
        results["memory"] = memory(max(args.repeats, 20), args.nodes)
        mem = results["memory"]
        for key in ("decide_full", "decide_empty"):
            mem[key]["decisions_per_second"] = 500 / mem[key]["median"]
    if {"gang", "queue", "native"} & set(args.parts):
        args.dir.mkdir(parents=True, exist_ok=True)
        live = Live(args.nodes, args.kubeconfig, args.dir)
        lv: dict[str, Any] = {"nodes": live.nodes, "settings": live.subject.settings}
        results["live"] = lv
        try:
            if "gang" in args.parts:
                lv["gang_64x8"] = big_gang(live, args.repeats)
                save(args.json, results)
            if "native" in args.parts:
                lv["native_64x8"] = big_gang(live, args.repeats, backend="PodGroup")
                save(args.json, results)
            if "queue" in args.parts:
                lv["queue_500"] = queued(live, args.queue_repeats)
        finally:
            live.close()
    print(table(results))
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
