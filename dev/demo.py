"""`make demo`: a real model trains through phalanx on this machine, in about a minute.

    python -m demo [--kill-one] [--keep]     (PYTHONPATH with dev/, operator/, trainers/; as root)

It starts a local control plane (dev/localcluster), applies the CRD, runs the operator
(`python -m phalanx.controller`) and a process node (dev/procnode, which runs pods as local
processes), creates a namespace with a checkpoint claim, and applies examples/pytorch-ddp.yaml with
the placement the process node needs. It prints the job's state and rank 0's step/loss lines until
the job ends, then stops everything it started. --kill-one SIGKILLs one trainer mid-run to show the
gang restart and the resume from the last checkpoint; --keep leaves the state dir (logs) behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import localcluster
from localcluster import binaries, process
from procnode.testing import NODE_SELECTOR, TOLERATION, NodeProcess

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pytorch-ddp.yaml"
CRD = REPO / "crds" / "phalanx.dev_trainingjobs.yaml"
NAMESPACE = "phalanx-demo"
TIMEOUT = 600.0
PACING = ["--step-sleep", "0.05", "--log-every", "25", "--checkpoint-every-steps", "50"]
SHOWN = re.compile(r"^(step \d+/\d+|done step|resumed from|.*preempted at step)")


class Demo:
    def __init__(self, state: Path, kill_one: bool) -> None:
        self.state = state
        self.kill_one = kill_one
        self.t0 = time.monotonic()
        self.kubeconfig = state / "cluster" / "kubeconfig"
        self.kubectl_exe = str(binaries.kubectl())
        self.operator: subprocess.Popen[bytes] | None = None
        self.node: NodeProcess | None = None
        self.cluster_up = False

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run(
            [self.kubectl_exe, f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    # --- setup ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
        self.cluster_up = True
        localcluster.up("default", self.state / "cluster", die_with_parent=True, log=lambda line: None)
        self.say(f"control plane ready; KUBECONFIG={self.kubeconfig}")
        self.kubectl("apply", "--server-side", "-f", str(CRD))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.phalanx.dev")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainers")]),
            "PHALANX_METRICS_PORT": "0",  # no operator metrics port: nothing to collide with
            "PHALANX_SCRAPE_INTERVAL_SECONDS": "2",  # so the efficiency column fills in during a short run
        }
        log = open(self.state / "operator.log", "ab")  # noqa: SIM115 - lives as long as the operator
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.say(f"operator started (python -m phalanx.controller, log {self.state / 'operator.log'})")
        self.node = NodeProcess(self.kubeconfig, self.state / "procnode", name="procnode", cpu="8")
        self.node.wait_ready(self.kubectl_exe)
        self.say(f"process node `procnode` Ready: pods run here as processes (logs {self.node.logs_dir})")

    def apply_job(self) -> str:
        job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        name = str(job["metadata"]["name"])
        claim = job["spec"]["checkpoint"]["claimName"]
        ckpt = self.state / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        self.kubectl("create", "namespace", NAMESPACE)
        volumes = [
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NAMESPACE}-{claim}"},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                      "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(ckpt)},
                      "claimRef": {"namespace": NAMESPACE, "name": claim}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": NAMESPACE},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{NAMESPACE}-{claim}",
                      "resources": {"requests": {"storage": "1Gi"}}}},
        ]  # fmt: skip
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(volumes))
        self.say(f"namespace {NAMESPACE}: claim {claim} bound to a hostPath volume at {ckpt}")
        # The example as a user would apply it, plus the placement that picks the process node.
        pod_spec = job["spec"]["template"]["spec"]
        pod_spec.setdefault("nodeSelector", {}).update(NODE_SELECTOR)
        pod_spec.setdefault("tolerations", []).append(TOLERATION)
        # Paced so there is something to watch: a short sleep per step, a log line and a checkpoint often.
        pod_spec["containers"][0]["args"] += PACING
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(job))
        self.say(
            f"applied {EXAMPLE.relative_to(REPO)} + nodeSelector/toleration for the process node + demo pacing "
            f"args {' '.join(PACING)}"
        )
        return name

    # --- progress ------------------------------------------------------------------------------
    def follow(self, name: str) -> dict[str, Any]:
        assert self.node is not None
        deadline = time.monotonic() + TIMEOUT
        last_summary = ""
        shown: dict[str, int] = {}  # log dir -> lines already printed
        killed = False
        while time.monotonic() < deadline:
            job: dict[str, Any] = json.loads(self.kubectl("get", "tj", name, "-n", NAMESPACE, "-o", "json"))
            s = job.get("status") or {}
            t = s.get("throughput") or {}
            summary = (
                f"job {name}: {s.get('state', 'Pending')}, attempt {s.get('attempt', '-')}, "
                f"pods ready {s.get('readySummary', '-')}, world size {s.get('worldSize', '-')}"
                + (f", {t['samplesPerSecond']:g} samples/s" if t.get("samplesPerSecond") else "")
                + (f", efficiency {t['scalingEfficiency']:g}" if t.get("scalingEfficiency") is not None else "")
            )
            if summary != last_summary:
                self.say(summary)
                last_summary = summary
            attempts = range(1, int(s.get("attempt") or 1) + 1)  # rank 0's pod has a name per attempt
            for run in (r for a in attempts for r in self.node.pod_runs(NAMESPACE, f"{name}-a{a}-worker-0")):
                lines = run.log().splitlines()
                for line in lines[shown.get(run.dir.name, 0) :]:
                    if SHOWN.match(line):
                        self.say(f"  {name}-worker-0 (attempt {run.attempt}) | {line}")
                shown[run.dir.name] = len(lines)
            if self.kill_one and not killed and list(self.state.glob("checkpoints/step-*/COMMITTED")):
                killed = self._kill_worker(name)
            if s.get("state") in ("Succeeded", "Failed"):
                return job
            time.sleep(0.5)
        raise TimeoutError(f"the job did not finish in {TIMEOUT:.0f}s; see {self.state}")

    def _kill_worker(self, name: str) -> bool:
        pod = json.loads(self.kubectl("get", "pod", f"{name}-a1-worker-1", "-n", NAMESPACE, "-o", "json"))
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if not statuses or "running" not in statuses[0].get("state", {}):
            return False
        pid = int(statuses[0]["containerID"].removeprefix("procnode://"))
        os.kill(pid, signal.SIGKILL)
        self.say(f"--kill-one: SIGKILL to {name}-worker-1's trainer (pid {pid}): the gang restarts and resumes")
        return True

    # --- teardown ------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.operator is not None:
            process.end(self.operator, grace=15)
        if self.cluster_up:
            localcluster.down(self.state / "cluster", log=lambda line: None)
        self.say("stopped the process node, the operator and the control plane")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kill-one", action="store_true", help="SIGKILL one trainer mid-run: see restart and resume")
    p.add_argument("--keep", action="store_true", help="keep the state dir (cluster, operator and pod logs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: the process node needs root (a mount namespace per pod); run `sudo make demo`", file=sys.stderr)
        return 1
    state = Path(tempfile.mkdtemp(prefix="phalanx-demo-"))
    demo = Demo(state, args.kill_one)
    signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        demo.start()
        name = demo.apply_job()
        job = demo.follow(name)
        print(demo.kubectl("get", "tj", "-n", NAMESPACE, "-o", "wide"), end="", flush=True)
        ckpts = sorted(d.name for d in (state / "checkpoints").glob("step-*"))
        status = job.get("status") or {}
        ok = status.get("state") == "Succeeded"
        demo.say(f"{name} {status.get('state')} after {status.get('restarts', 0)} restart(s); checkpoints: "
                 f"{', '.join(ckpts) or 'none'}")  # fmt: skip
    except KeyboardInterrupt:
        demo.say("interrupted; cleaning up")
    except Exception as e:
        demo.say(f"demo failed: {e}")
    finally:
        demo.stop()
        if ok and not args.keep:
            shutil.rmtree(state, ignore_errors=True)
        else:
            demo.say(f"state kept in {state}: cluster/logs, operator.log, procnode/logs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
