"""Scheduling benchmark (not a test): what gang admission costs and how fast a big gang starts.

`python -m bench scheduling [memory] [live] [--repeats N] [--nodes 100] [--kubeconfig PATH] [--dir DIR]`

memory  The admission pass over in-memory caches, no API involved (what the operator does per decision):
        - decide() on 100 nodes of 8 GPUs with 500 queued gangs: the cluster full (all wait) and empty
          (100 admitted, 400 wait);
        - Admitter.admit_once() over fake kopf indexes holding the same 500 queued jobs and their 1000
          gated pods, beside 0, 1000 and 5000 running 8-pod jobs (up to 40000 pods): the pass must
          not grow with the pods of jobs that do not wait.
live    On a simulated 100-node cluster (scale profile; started here unless --kubeconfig), phalanx as
        its own process: from creating one 64-worker x 8-GPU TrainingJob to all 64 pods created,
        ungated (admitted), bound by kube-scheduler, and Running (kwok). Then 500 queued 1 x 8-GPU
        jobs behind a job holding every GPU: from that job's end to 100 of them admitted and bound.

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
    for running in (0, 1000, 5000):
        op = FakeOperator(n_nodes)
        for i in range(running):
            op.add_job(f"r{i}", 8, "Running", i)
        for i in range(500):
            op.add_job(f"q{i}", 2, "Queued", running + i)
        op.indices["usage_index"] = {("bench", f"u{i}"): [Usage(f"gpu-{i}", {GPU: 8})] for i in range(n_nodes)}
        pods = sum(len(v) for v in op.indices["pod_index"].values())
        results[f"admit_once_{running}_running"] = {**summary(admission_passes(op, repeats)), "pods_in_cache": pods}
    return results


# --- live ------------------------------------------------------------------------------------------


def live(
    repeats: int,
    queue_repeats: int,
    n_nodes: int,
    kubeconfig: Path | None,
    directory: Path,
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    import kubernetes

    import localcluster
    from bench import kube
    from bench.subjects import Phalanx
    from bench.watch import PodWatch

    started_here = kubeconfig is None
    if kubeconfig is None:
        info = localcluster.up("scale", directory / "cluster", nodes=n_nodes, log=lambda s: print(s, file=sys.stderr))
        kubeconfig = info.kubeconfig
    api = kube.api_client(kubeconfig)
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    kube.apply_crd(api, kube.PHALANX_CRD)
    subject = Phalanx(kubeconfig, directory / "logs")
    subject.logs.mkdir(parents=True, exist_ok=True)
    subject.start_controller()
    results: dict[str, Any] = {"nodes": len(core.list_node().items), "settings": subject.settings}

    def job(name: str, replicas: int) -> dict[str, Any]:
        return {
            "apiVersion": "phalanx.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {
                "framework": "pytorch",
                "replicas": replicas,
                "resources": {"gpus": 8},
                "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:bench"}]}},
            },
        }

    try:
        stages: dict[str, list[float]] = {"created": [], "admitted": [], "bound": [], "running": []}
        for r in range(repeats + 1):  # the first round warms the operator up and is not counted
            ns = kube.create_namespace(core, f"bench-sched-{int(time.time())}-{r}")
            with PodWatch(api, ns, names.LABEL_JOB) as watch:
                t0 = time.monotonic()
                custom.create_namespaced_custom_object(*kube.TJ[:2], ns, kube.TJ[2], job("big", 64))
                watch.wait(lambda p: len(p) == 64, 300, "64 pods")
                created = max(p.created for p in watch.snapshot())
                watch.wait(lambda p: sum(1 for x in p.values() if x.bound) == 64, 300, "64 pods bound")
                watch.wait(lambda p: sum(1 for x in p.values() if x.running) == 64, 300, "64 pods Running")
                pods = watch.snapshot()
            # Admission: the gates are lifted in one burst; the first binding follows it at once.
            admitted = min(p.bound for p in pods if p.bound)
            if r:
                stages["created"].append(created - t0)
                stages["admitted"].append(admitted - t0)
                stages["bound"].append(max(p.bound for p in pods if p.bound) - t0)
                stages["running"].append(max(p.running for p in pods if p.running) - t0)
            kube.delete_namespace(core, ns)
        results["job_64x8"] = {k: summary(v) for k, v in stages.items()}
        save(results)

        # 500 queued jobs behind one that holds every GPU; when it ends, how fast do 100 get in?
        waits: list[float] = []
        for r in range(queue_repeats):
            ns = kube.create_namespace(core, f"bench-queue-{int(time.time())}-{r}")
            with PodWatch(api, ns, names.LABEL_JOB) as watch:
                custom.create_namespaced_custom_object(*kube.TJ[:2], ns, kube.TJ[2], job("all", n_nodes))
                watch.wait(lambda p: sum(1 for x in p.values() if x.running) == n_nodes, 300, "blocker running")
                for i in range(500):
                    custom.create_namespaced_custom_object(*kube.TJ[:2], ns, kube.TJ[2], job(f"q{i:03d}", 1))
                watch.wait(lambda p: len(p) == n_nodes + 500, 600, "500 queued pods")
                time.sleep(5)  # let the operator settle its notes for the 500
                t0 = time.monotonic()
                custom.delete_namespaced_custom_object(*kube.TJ[:2], ns, kube.TJ[2], "all")
                core.delete_collection_namespaced_pod(
                    ns, label_selector=f"{names.LABEL_JOB}=all", grace_period_seconds=0
                )
                watch.wait(
                    lambda p: sum(1 for x in p.values() if x.job != "all" and x.bound) >= n_nodes,
                    600,
                    f"{n_nodes} queued jobs bound",
                )
                waits.append(max(x.bound for x in watch.snapshot() if x.job != "all" and x.bound) - t0)
            kube.delete_namespace(core, ns)
        results["queue_500"] = {"admit_and_bind_100": summary(waits)}
    finally:
        subject.stop()
        if started_here:
            import localcluster

            localcluster.down(directory / "cluster", log=lambda s: print(s, file=sys.stderr))
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| measurement | median | min | max |", "|---|---|---|---|"]

    def ms(s: dict[str, float]) -> str:
        return f"| {{}} | {s['median'] * 1000:.1f} ms | {s['min'] * 1000:.1f} ms | {s['max'] * 1000:.1f} ms |"

    mem = results.get("memory", {})
    if mem:
        rows.append(ms(mem["decide_full"]).format("decide(): 100 nodes full, 500 queued gangs (all wait)"))
        rows.append(ms(mem["decide_empty"]).format("decide(): 100 nodes empty, 500 queued 1-pod gangs (100 admitted)"))
        for running in (0, 1000, 5000):
            s = mem[f"admit_once_{running}_running"]
            rows.append(
                ms(s).format(
                    f"admit_once(): 500 queued jobs + {running} running jobs ({s['pods_in_cache']} pods cached)"
                )
            )
    lv = results.get("live", {})
    if lv:
        for stage, label in (
            ("created", "64 x 8-GPU job: all pods created"),
            ("admitted", "64 x 8-GPU job: admitted (first pod bound)"),
            ("bound", "64 x 8-GPU job: all 64 pods bound"),
            ("running", "64 x 8-GPU job: all 64 pods Running"),
        ):
            s = lv["job_64x8"][stage]
            rows.append(f"| {label} | {s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s |")
        s = lv["queue_500"]["admit_and_bind_100"]
        rows.append(
            f"| 500 queued 1 x 8-GPU jobs: capacity freed -> 100 admitted and bound | {s['median']:.2f} s | "
            f"{s['min']:.2f} s | {s['max']:.2f} s |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench scheduling", description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", default=["memory", "live"], help="memory and/or live (default: both)")
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
    if "live" in args.parts:
        args.dir.mkdir(parents=True, exist_ok=True)

        def save(partial: dict[str, Any]) -> None:  # a long run keeps what it measured if cut short
            if args.json:
                args.json.write_text(json.dumps({**results, "live": partial}, indent=2, default=str))

        results["live"] = live(args.repeats, args.queue_repeats, args.nodes, args.kubeconfig, args.dir, save)
    print(table(results))
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
