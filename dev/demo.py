"""`make demo`: phalanx's story on this machine in about a minute (warm): baseline, scale, kill, resume.

    python -m demo [--keep] [--since EPOCH]     (PYTHONPATH with dev/, operator/, trainers/; as root)

It starts a local control plane (dev/localcluster), applies the CRD, runs the operator
(`python -m phalanx.controller`) and a process node (dev/procnode, which runs pods as local
processes), creates a namespace with a checkpoint claim, and applies examples/pytorch-ddp.yaml at one
replica with the placement the process node needs. Then, with real torch processes:

1. one replica trains until the operator has measured its throughput: the baseline X(1);
2. `kubectl scale` to 2 replicas: the gang restarts at world size 2, resuming from the checkpoint;
3. once the 2-rank gang has committed a checkpoint, one rank is SIGKILLed;
4. the whole gang restarts and resumes from the last checkpoint (the step is named);
5. the job ends Succeeded, with its scaling efficiency against the measured baseline and its goodput,
   shown by `kubectl get tj` and `kubectl phalanx status`.

If the operator or the process node dies, the demo stops within a second and prints its last log lines.
--keep leaves the state dir (cluster, operator and pod logs) behind; --since is when `make demo`
started, so the set-up time (packages, binaries) is printed too.
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
from collections import deque
from pathlib import Path
from typing import Any

import yaml

import localcluster
from localcluster import binaries, process
from localcluster.testing import Kubectl
from procnode.testing import NODE_SELECTOR, TOLERATION, NodeProcess

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pytorch-ddp.yaml"
CRD = REPO / "crds" / "phalanx.dev_trainingjobs.yaml"
NAMESPACE = "phalanx-demo"
TIMEOUT = 600.0
SCALED_TO = 2
# Paced so there is something to watch: a short sleep per step, a log line and a checkpoint often.
PACING = ["--steps", "600", "--step-sleep", "0.05", "--log-every", "50", "--checkpoint-every-steps", "40"]
SHOWN = re.compile(r"^(step \d+/\d+|done step|resumed from|.*preempted at step)")


class DemoError(Exception):
    """The demo cannot go on; the message says why (with the log lines that show it)."""


def tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, lines)).rstrip()
    except OSError:
        return "(no log)"


class Demo:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.t0 = time.monotonic()
        self.kubeconfig = state / "cluster" / "kubeconfig"
        self.kubectl_exe = str(binaries.kubectl())
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = state / "operator.log"
        self.node: NodeProcess | None = None
        self.cluster_up = False
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainers")]),
            "PHALANX_METRICS_PORT": "0",  # no operator metrics port: nothing to collide with
            "PHALANX_SCRAPE_INTERVAL_SECONDS": "2",  # so throughput and efficiency fill in during a short run
        }

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run(
            [self.kubectl_exe, f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def phalanx(self, *args: str) -> str:
        """`kubectl phalanx ARGS`, run as the plugin runs (python -m phalanx.cli)."""
        out = subprocess.run(
            [sys.executable, "-m", "phalanx.cli", *args, "-n", NAMESPACE],
            env={**self.env, "PHALANX_SCRAPE_NETWORKS": "127.0.0.0/8"}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.stdout if out.returncode == 0 else f"kubectl phalanx {' '.join(args)}: {out.stderr.strip()}\n"

    def check_alive(self) -> None:
        """Fail at once, with its last log lines, when the operator or the process node has died."""
        if self.operator is not None and self.operator.poll() is not None:
            raise DemoError(
                f"the operator exited with code {self.operator.returncode}; last lines of {self.operator_log}:\n"
                + tail(self.operator_log)
            )
        if self.node is not None and self.node.proc.poll() is not None:
            raise DemoError(
                f"the process node exited with code {self.node.proc.returncode}; last lines of its log:\n"
                + tail(self.node.log_path)
            )

    # --- setup ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
        self.cluster_up = True
        localcluster.up("default", self.state / "cluster", die_with_parent=True, log=lambda line: None)
        self.say(f"control plane ready; KUBECONFIG={self.kubeconfig}")
        Kubectl(self.kubeconfig).apply_crd(CRD)
        log = self.operator_log.open("ab")  # open as long as the operator runs
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.say(f"operator started (python -m phalanx.controller, log {self.operator_log})")
        self.node = NodeProcess(self.kubeconfig, self.state / "procnode", name="procnode", cpu="8")
        self.node.wait_ready(self.kubectl_exe)
        self.check_alive()
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
        # The example as a user would apply it, at one replica first (the baseline), plus the
        # placement that picks the process node and the demo's pacing.
        job["spec"]["replicas"] = 1
        pod_spec = job["spec"]["template"]["spec"]
        pod_spec.setdefault("nodeSelector", {}).update(NODE_SELECTOR)
        pod_spec.setdefault("tolerations", []).append(TOLERATION)
        trainer = pod_spec["containers"][0]
        trainer["args"] = _without_flag(trainer["args"], "--steps") + PACING
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(job))
        self.say(
            f"1/5 applied {EXAMPLE.relative_to(REPO)} at replicas: 1, for the baseline (+ nodeSelector/toleration "
            f"for the process node, demo pacing {' '.join(PACING)})"
        )
        return name

    # --- the story -----------------------------------------------------------------------------
    def follow(self, name: str) -> dict[str, Any]:
        assert self.node is not None
        deadline = time.monotonic() + TIMEOUT
        last_summary = ""
        shown: dict[str, int] = {}  # log dir -> lines already printed
        stage = "baseline"
        scaled_at_attempt = killed_at_attempt = 0
        while time.monotonic() < deadline:
            self.check_alive()
            job: dict[str, Any] = json.loads(self.kubectl("get", "tj", name, "-n", NAMESPACE, "-o", "json"))
            s = job.get("status") or {}
            t = s.get("throughput") or {}
            ckpt = s.get("lastCheckpoint") or {}
            summary = (
                f"job {name}: {s.get('state', 'Pending')}, attempt {s.get('attempt', '-')}, "
                f"pods ready {s.get('readySummary', '-')}, world size {s.get('worldSize', '-')}"
                + (f", {t['samplesPerSecond']:g} samples/s" if t.get("samplesPerSecond") else "")
                + (f", efficiency {t['scalingEfficiency']:g}" if t.get("scalingEfficiency") is not None else "")
                + (f", checkpoint step {ckpt['step']}" if ckpt.get("step") is not None else "")
            )
            if summary != last_summary:
                self.say(summary)
                last_summary = summary
            self._show_logs(name, shown)
            if s.get("state") in ("Succeeded", "Failed"):
                return job
            running = s.get("state") == "Running"
            resumed = s.get("resumedFromStep")  # None until this attempt's trainers report
            # A second checkpoint at one pod: the baseline has been measured over steady steps.
            if stage == "baseline" and running and t.get("baselineReplicas") == 1 and ckpt.get("step", 0) >= 80:
                self.say(
                    f"2/5 baseline measured at 1 pod: X(1) = {t['baselineSamplesPerSecond']:g} samples/s; "
                    f"kubectl scale tj/{name} --replicas={SCALED_TO}: the gang restarts at world size {SCALED_TO} "
                    f"from checkpoint step {ckpt['step']}"
                )
                self.kubectl("scale", "tj", name, "-n", NAMESPACE, f"--replicas={SCALED_TO}")
                scaled_at_attempt, stage = int(s.get("attempt", 0)), "scaled"
            elif (
                stage == "scaled"
                and running
                and int(s.get("attempt", 0)) > scaled_at_attempt
                and resumed is not None
                and any(size.get("replicas") == SCALED_TO for size in t.get("sizes") or [])
                and ckpt.get("step", 0) > resumed
                and self._kill_worker(name)
            ):
                killed_at_attempt, stage = int(s.get("attempt", 0)), "killed"
            elif stage == "killed" and int(s.get("attempt", 0)) > killed_at_attempt and resumed is not None:
                self.say(f"4/5 the whole gang restarted as attempt {s.get('attempt')} and resumed from step {resumed}")
                stage = "resumed"
            time.sleep(0.5)
        raise DemoError(f"the job did not finish in {TIMEOUT:.0f}s; see {self.state}")

    def _show_logs(self, name: str, shown: dict[str, int]) -> None:
        assert self.node is not None
        for i in range(SCALED_TO):
            for run in self.node.pod_runs(NAMESPACE, f"{name}-worker-{i}"):
                lines = run.log().splitlines()
                for line in lines[shown.get(run.dir.name, 0) :]:
                    if SHOWN.match(line) and (i == 0 or not line.startswith("step ")):
                        self.say(f"  {name}-worker-{i} (attempt {run.attempt}) | {line}")
                shown[run.dir.name] = len(lines)

    def _kill_worker(self, name: str) -> bool:
        pod = json.loads(self.kubectl("get", "pod", f"{name}-worker-1", "-n", NAMESPACE, "-o", "json"))
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if not statuses or "running" not in statuses[0].get("state", {}):
            return False
        pid = int(statuses[0]["containerID"].removeprefix("procnode://"))
        os.kill(pid, signal.SIGKILL)
        self.say(
            f"3/5 SIGKILL to {name}-worker-1's trainer (pid {pid}): a rank is lost, "
            "so the whole gang restarts and resumes from the last checkpoint"
        )
        return True

    def finish(self, name: str, job: dict[str, Any]) -> bool:
        s = job.get("status") or {}
        t = s.get("throughput") or {}
        if s.get("state") != "Succeeded":
            reasons = "; ".join(f"{c.get('type')}: {c.get('message')}" for c in s.get("conditions") or [])
            raise DemoError(f"{name} ended {s.get('state')}: {reasons}")
        self.say(
            f"5/5 {name} Succeeded after one rescale and {s.get('restarts', 0)} failure restart(s); "
            f"scaling efficiency {t.get('scalingEfficiency')} at {SCALED_TO} pods against the 1-pod baseline, "
            f"goodput {t.get('goodput')}"
        )
        print(f"\n$ kubectl get tj -n {NAMESPACE} -o wide", flush=True)
        print(self.kubectl("get", "tj", "-n", NAMESPACE, "-o", "wide"), end="", flush=True)
        print(f"\n$ kubectl phalanx status {name} -n {NAMESPACE}", flush=True)
        print(self.phalanx("status", name), end="", flush=True)
        return True

    # --- teardown ------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.operator is not None and self.operator.poll() is None:
            process.end(self.operator, grace=15)
        if self.cluster_up:
            localcluster.down(self.state / "cluster", log=lambda line: None)
        self.say("stopped the process node, the operator and the control plane")


def _without_flag(args: list[str], flag: str) -> list[str]:
    """`args` without `flag` and its value."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        else:
            out.append(a)
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--keep", action="store_true", help="keep the state dir (cluster, operator and pod logs)")
    p.add_argument("--since", type=float, help="unix time `make demo` started: the set-up time is printed too")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: the process node needs root (a mount namespace per pod); run `sudo make demo`", file=sys.stderr)
        return 1
    setup = time.time() - args.since if args.since else None
    state = Path(tempfile.mkdtemp(prefix="phalanx-demo-"))
    demo = Demo(state)
    signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        demo.start()
        name = demo.apply_job()
        ok = demo.finish(name, demo.follow(name))
    except KeyboardInterrupt:
        demo.say("interrupted; cleaning up")
    except (DemoError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        demo.say(f"demo failed: {e}")
    finally:
        demo.stop()
        if ok and not args.keep:
            shutil.rmtree(state, ignore_errors=True)
        else:
            demo.say(f"state kept in {state}: cluster/logs, operator.log, procnode/logs")
    took = time.monotonic() - demo.t0
    print(
        f"\ndemo {'passed' if ok else 'FAILED'}: {took:.0f} s"
        + (f", after {setup:.0f} s of set-up (packages, binaries)" if setup is not None else ""),
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
