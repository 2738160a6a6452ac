"""Leader failover: from the leader's death to the standby's first action, for SIGTERM and SIGKILL.

    python -m bench.failover [--repeats 5] [--lease-duration 15 --renew-deadline 10 --retry-period 1]
                             [--kubeconfig PATH] [--out results.json]

What runs: the local control plane (default profile, or --kubeconfig to reuse one) and two operator
processes sharing one Lease with the chart's timings, both warm (their caches filled, contending). Each
repeat kills the leader (SIGTERM: kopf shuts down and the lease is released; SIGKILL: no release, the
lease must run out), creates a TrainingJob at once, and times the first write any operator makes for
it: the first watch event that shows its status (the reconcile writes status before it creates pods).
Only the standby can make it, so that is the standby's first action. Goals (issue 16): SIGTERM <= 2 s,
SIGKILL <= lease duration + 2 s. Prints medians, min and max; --out writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

import bench  # noqa: F401  (puts operator/ and dev/ on sys.path)
from bench import REPO, kube
from localcluster import process
from localcluster.testing import wait_for

NAMESPACE = "bench-failover"
GROUP, VERSION, PLURAL = "phalanx.dev", "v1alpha1", "trainingjobs"


class Operator:
    def __init__(self, kubeconfig: Path, log: Path, identity: str, lease: dict[str, str]) -> None:
        self.identity, self.log_path = identity, log
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "trainers")),
            "PHALANX_OPERATOR_METRICS_PORT": "0",
            "PHALANX_TELEMETRY": "off",
            "PHALANX_POD_NAME": identity,
            **lease,
        }
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        process.end(self.proc, grace=15)
        self._log.close()


def first_status(custom: Any, name: str, ready: threading.Event, result: list[float]) -> None:
    """The receipt time of the first watch event that shows the job's status (someone acted on it)."""
    from kubernetes import watch

    w = watch.Watch()
    ready.set()
    for event in w.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        field_selector=f"metadata.name={name}",
        timeout_seconds=120,
    ):
        if (event["object"].get("status") or {}).get("attempt"):
            result.append(time.monotonic())
            w.stop()
            return


def one(
    args: argparse.Namespace, kubeconfig: Path, custom: Any, coordination: Any, tmp: Path, mode: str, n: int
) -> dict[str, Any]:
    lease = {
        "PHALANX_LEASE_NAMESPACE": NAMESPACE,
        "PHALANX_LEASE_NAME": f"failover-{uuid.uuid4().hex[:8]}",
        "PHALANX_LEASE_DURATION_SECONDS": str(args.lease_duration),
        "PHALANX_LEASE_RENEW_DEADLINE_SECONDS": str(args.renew_deadline),
        "PHALANX_LEASE_RETRY_PERIOD_SECONDS": str(args.retry_period),
    }
    ops = [Operator(kubeconfig, tmp / f"{mode}-{n}-{i}.log", f"{mode}-{n}-{i}", lease) for i in range(2)]
    try:
        # Both warm: caches filled and contending (the elector logs its first line only then).
        for op in ops:
            wait_for(lambda op=op: "leader election: lease" in op.log() or None, timeout=120, what="a warm operator")

        def holder() -> str | None:
            got = coordination.read_namespaced_lease(lease["PHALANX_LEASE_NAME"], NAMESPACE)
            return str(got.spec.holder_identity) if got.spec.holder_identity else None

        wait_for(lambda: holder() in {o.identity for o in ops} or None, timeout=60, what="a leader")
        leader = next(o for o in ops if o.identity == holder())
        standby = next(o for o in ops if o is not leader)
        time.sleep(2 * args.retry_period)  # the standby has seen the lease held at least once
        name = f"probe-{mode}-{n}"
        ready, acted = threading.Event(), []
        watcher = threading.Thread(target=first_status, args=(custom, name, ready, acted), daemon=True)
        watcher.start()
        ready.wait(10)
        time.sleep(0.5)  # the watch is established
        t0 = time.monotonic()
        if mode == "sigterm":
            leader.proc.terminate()
        else:
            leader.proc.kill()
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, probe_job(name))
        watcher.join(args.lease_duration + 60)
        if not acted:
            raise RuntimeError(f"{mode} #{n}: no operator acted on {name}; logs in {tmp}")
        new_holder = holder()
        assert new_holder == standby.identity, f"{mode} #{n}: lease held by {new_holder}, not the standby"
        return {"mode": mode, "first_action_s": round(acted[0] - t0, 3)}
    finally:
        for op in ops:
            op.stop()
        with contextlib.suppress(ApiException):  # not created if the run failed before
            custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, f"probe-{mode}-{n}")


def probe_job(name: str) -> dict[str, Any]:
    container = {"name": "trainer", "image": "trainer:bench", "command": ["python", "-m", "x"]}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"framework": "pytorch", "replicas": 1, "template": {"spec": {"containers": [container]}}},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--modes", default="sigterm,sigkill")
    p.add_argument("--lease-duration", type=float, default=15.0, help="the chart's default: %(default)s")
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=1.0)
    p.add_argument("--kubeconfig", type=Path, help="reuse this cluster instead of starting one")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    from kubernetes.client import CoordinationV1Api, CoreV1Api, CustomObjectsApi

    import localcluster

    tmp = Path(tempfile.mkdtemp(prefix="phalanx-bench-failover-"))
    cluster = None
    if args.kubeconfig is None:
        print(f"starting the local control plane (default profile) in {tmp}", flush=True)
        cluster = localcluster.up("default", tmp / "cluster", die_with_parent=True, log=lambda *_: None)
        kubeconfig = cluster.kubeconfig
    else:
        kubeconfig = args.kubeconfig
    api = kube.api_client(kubeconfig, concurrency=8)
    core, custom, coordination = CoreV1Api(api), CustomObjectsApi(api), CoordinationV1Api(api)
    try:
        kube.apply_crd(api, kube.PHALANX_CRD)
        if NAMESPACE not in {n.metadata.name for n in core.list_namespace().items}:
            core.create_namespace({"metadata": {"name": NAMESPACE}})
        runs = []
        for mode in args.modes.split(","):
            for n in range(args.repeats):
                r = one(args, kubeconfig, custom, coordination, tmp, mode, n)
                print(f"{mode} #{n + 1}: first action {r['first_action_s']:.2f} s after the leader's death", flush=True)
                runs.append(r)
    finally:
        if cluster is not None:
            localcluster.down(tmp / "cluster", log=lambda *_: None)
    goals = {"sigterm": 2.0, "sigkill": args.lease_duration + 2.0}
    summary = {}
    print("\n| leader | runs | median | min | max | goal |\n|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        xs = [r["first_action_s"] for r in runs if r["mode"] == mode]
        summary[mode] = {"runs": len(xs), "median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs)}
        print(f"| {mode.upper()} | {len(xs)} | {statistics.median(xs):.2f} s | {min(xs):.2f} s | {max(xs):.2f} s | "
              f"<= {goals[mode]:g} s |")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        lease = {
            "duration_s": args.lease_duration,
            "renew_deadline_s": args.renew_deadline,
            "retry_s": args.retry_period,
        }
        args.out.write_text(json.dumps({"lease": lease, "summary": summary, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
