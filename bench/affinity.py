"""`python -m bench.affinity --kubeconfig K [--workers 256] [--repeats 2]`: what phalanx's preferred pod
affinity (pack the gang: same node, then same zone) costs the scheduler.

The same gang of phalanx-built pods (bench.workloads), created ungated by one client with the same
concurrency, with and without the two preferred podAffinity terms, alternately: time until all are
bound and Running. A diagnostic for docs/benchmarks.md, not part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

import bench  # noqa: F401
from bench import kube, scenarios
from bench.watch import PodWatch, max_time
from bench.workloads import JobSpec, phalanx_objects, training_job
from phalanx.core import names


def run(ctx: scenarios.Ctx, workers: int, affinity: bool, concurrency: int) -> dict[str, Any]:
    ns = ctx.namespace(f"affinity-{'on' if affinity else 'off'}")
    custom = kubernetes.client.CustomObjectsApi(ctx.api)
    try:
        body = custom.create_namespaced_custom_object(
            *kube.TJ[:2], ns, kube.TJ[2], training_job(ns, JobSpec("job", workers))
        )
        _, pods = phalanx_objects(body)
        for p in pods:
            p["spec"].pop("schedulingGates", None)
            if not affinity:
                p["spec"]["affinity"].pop("podAffinity", None)
        with PodWatch(ctx.api, ns, names.LABEL_JOB) as w, ThreadPoolExecutor(concurrency) as pool:
            t0 = time.monotonic()
            list(pool.map(lambda p: ctx.core.create_namespaced_pod(ns, p, _preload_content=False), pods))
            w.wait(lambda ps: sum(1 for p in ps.values() if p.running) >= workers, ctx.timeout, "all Running")
            snap = w.snapshot()
        return {
            "affinity": affinity,
            "created_s": (max_time(snap, "created") or 0) - t0,
            "bound_s": (max_time(snap, "bound") or 0) - t0,
            "running_s": (max_time(snap, "running") or 0) - t0,
            "nodes_used": len({p.node for p in snap}),
        }
    finally:
        ctx.cleanup(ns)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.affinity", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--workers", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)
    ctx = scenarios.Ctx(args.kubeconfig, Path("."), args.concurrency, timeout=900)
    kube.apply_crd(ctx.api, kube.PHALANX_CRD)
    runs = []
    for rep in range(args.repeats):
        for affinity in (True, False):
            r = run(ctx, args.workers, affinity, args.concurrency)
            runs.append(r)
            print(f"rep {rep + 1} podAffinity={'on ' if affinity else 'off'}: {json.dumps(r)}", flush=True)
    for affinity in (True, False):
        mine = [r for r in runs if r["affinity"] is affinity]
        bound = statistics.median(r["bound_s"] for r in mine)
        running = statistics.median(r["running_s"] for r in mine)
        print(
            f"podAffinity {'on ' if affinity else 'off'}: bound median {bound:.1f}s, Running median {running:.1f}s, "
            f"nodes used {[r['nodes_used'] for r in mine]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
