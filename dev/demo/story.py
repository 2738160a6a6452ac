"""The demo's story: a local cluster, the operator, and examples/pytorch-ddp.yaml told in five steps.

It starts a local control plane (dev/localcluster), applies the CRD, runs the operator
(`python -m phalanx.controller`) and the node the pods run on (demo.nodes), creates a namespace with a
checkpoint claim, and applies examples/pytorch-ddp.yaml at one replica with the placement that node
needs. Then, with real torch processes:

1. one replica trains until the operator has measured its throughput: the baseline X(1);
2. `kubectl scale` to 2 replicas: the gang restarts at world size 2, resuming from the checkpoint;
3. once the 2-rank gang has committed a checkpoint, one rank is SIGKILLed;
4. the whole gang restarts and resumes from the last checkpoint (the step is named);
5. the job ends Succeeded, with its scaling efficiency against the measured baseline and its goodput,
   shown by `kubectl get tj` and `kubectl phalanx status`.

If the operator or the process node dies, the demo stops within a second and prints its last log lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import localcluster
from demo.nodes import Node, ProcessNode, RealNode, tail
from localcluster import binaries, process
from localcluster.testing import Kubectl
from phalanx.core.names import LABEL_ATTEMPT, LABEL_INDEX, selector

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pytorch-ddp.yaml"
CRD = REPO / "crds" / "phalanx.dev_trainingjobs.yaml"
NAMESPACE = "phalanx-demo"
TIMEOUT = 600.0
SCALED_TO = 2
# X(1) is taken once its readings over the last 6 s (three scrapes) agree within 5 %: the first ones
# still carry the run's warm-up, and this machine's other work makes every reading wobble a little.
BASELINE_STEADY_S, BASELINE_SPREAD = 6.0, 0.05
# Paced so there is something to watch: a short sleep per step, a log line and a checkpoint often.
PACING = ["--steps", "1000", "--step-sleep", "0.03", "--log-every", "100", "--checkpoint-every-steps", "50"]
SHOWN = re.compile(r"^(step \d+/\d+|done step|resumed from|.*preempted at step)")


class DemoError(Exception):
    """The demo cannot go on; the message says why (with the log lines that show it)."""


class Demo:
    def __init__(self, state: Path, real: bool) -> None:
        self.state = state
        self.t0 = time.monotonic()
        self.kubeconfig = state / "cluster" / "kubeconfig"
        self.kubectl_exe = str(binaries.kubectl())
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = state / "operator.log"
        self.node: Node = (RealNode if real else ProcessNode)(state, self.kubeconfig)
        self.node_started = False
        self.cluster_up = False
        self.stage = "start"  # how far the story got: baseline, scaled, killed, resumed
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainers")]),
            "PHALANX_OPERATOR_METRICS_PORT": "0",  # no operator metrics port: nothing to collide with
            # Throughput over the last 10 s, read every 2 s, so the numbers fill in and settle during a short
            # run (the defaults are 15 s and a 60-s window, like Prometheus's rate(...[1m])).
            "PHALANX_SCRAPE_INTERVAL_SECONDS": "2",
            "PHALANX_SCRAPE_WINDOW_SECONDS": "10",
            "PHALANX_SCRAPE_NETWORKS": self.node.scrape_networks,
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
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.stdout if out.returncode == 0 else f"kubectl phalanx {' '.join(args)}: {out.stderr.strip()}\n"

    def check_alive(self) -> None:
        """Fail at once, with its last log lines, when the operator or the process node has died."""
        if self.operator is not None and self.operator.poll() is not None:
            raise DemoError(
                f"the operator exited with code {self.operator.returncode}; last lines of {self.operator_log}:\n"
                + tail(self.operator_log)
            )
        died = self.node.died() if self.node_started else None
        if died:
            raise DemoError(died)

    # --- setup ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.say(
            "starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
            + (" and the real node (containerd, kubelet; a new trainer image takes minutes to load)"
               if self.node.profile == "real" else "")
        )  # fmt: skip
        self.cluster_up = True
        localcluster.up(self.node.profile, self.state / "cluster", die_with_parent=True, log=lambda line: None)
        self.say(f"control plane ready; KUBECONFIG={self.kubeconfig}")
        Kubectl(self.kubeconfig).apply_crd(CRD)
        log = self.operator_log.open("ab")  # open as long as the operator runs
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.say(f"operator started (python -m phalanx.controller, log {self.operator_log})")
        self.node_started = True
        self.node.start(self.kubectl_exe)
        self.check_alive()
        self.say(self.node.what)

    def apply_job(self) -> str:
        job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        name = str(job["metadata"]["name"])
        claim = job["spec"]["checkpoint"]["claimName"]
        ckpt = self.state / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        self.node.share(ckpt)
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
        self.node.place(pod_spec)
        trainer = pod_spec["containers"][0]
        trainer["args"] = _without_flag(trainer["args"], "--steps") + PACING
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(job))
        self.say(
            f"1/5 applied {EXAMPLE.relative_to(REPO)} at replicas: 1, for the baseline (+ the placement on "
            f"that node, demo pacing {' '.join(PACING)})"
        )
        return name

    # --- the story -----------------------------------------------------------------------------
    def follow(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        last_summary = ""
        shown: dict[str, int] = {}  # log dir -> lines already printed
        self.stage = "baseline"
        scaled_at_attempt = killed_at_attempt = 0
        readings: list[tuple[float, float]] = []  # (when, X(1) in status) at one pod
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
            if t.get("baselineSamplesPerSecond") and t.get("baselineReplicas") == 1:
                readings.append((time.monotonic(), float(t["baselineSamplesPerSecond"])))
            steady = _steady(readings)
            if self.stage == "baseline" and running and t.get("baselineReplicas") == 1 and steady and ckpt.get("step"):
                self.say(
                    f"2/5 baseline measured at 1 pod: X(1) = {t['baselineSamplesPerSecond']:g} samples/s; "
                    f"kubectl scale tj/{name} --replicas={SCALED_TO}: the gang restarts at world size {SCALED_TO} "
                    f"from checkpoint step {ckpt['step']}"
                )
                self.kubectl("scale", "tj", name, "-n", NAMESPACE, f"--replicas={SCALED_TO}")
                scaled_at_attempt, self.stage = int(s.get("attempt", 0)), "scaled"
            elif (
                self.stage == "scaled"
                and running
                and int(s.get("attempt", 0)) > scaled_at_attempt
                and resumed is not None
                and any(size.get("replicas") == SCALED_TO for size in t.get("sizes") or [])
                and ckpt.get("step", 0) > resumed
                and self._kill_worker(name)
            ):
                killed_at_attempt, self.stage = int(s.get("attempt", 0)), "killed"
            elif self.stage == "killed" and int(s.get("attempt", 0)) > killed_at_attempt and resumed is not None:
                self.say(f"4/5 the whole gang restarted as attempt {s.get('attempt')} and resumed from step {resumed}")
                self.stage = "resumed"
            time.sleep(0.5)
        raise DemoError(f"the job did not finish in {TIMEOUT:.0f}s; see {self.state}")

    def _ranks(self, name: str) -> dict[int, dict[str, Any]]:
        """rank index -> its pod of the newest attempt (an old attempt's pod may still be going)."""
        out = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector(name), "-o", "json")
        ranks: dict[int, dict[str, Any]] = {}
        for pod in json.loads(out)["items"]:
            labels = pod["metadata"].get("labels", {})
            index, attempt = int(labels.get(LABEL_INDEX, -1)), int(labels.get(LABEL_ATTEMPT, 0))
            if index not in ranks or attempt > int(ranks[index]["metadata"]["labels"].get(LABEL_ATTEMPT, 0)):
                ranks[index] = pod
        return ranks

    def _show_logs(self, name: str, shown: dict[str, int]) -> None:
        """New step/resume lines of rank 0, and the other ranks' resume and exit lines."""
        for index, pod in sorted(self._ranks(name).items()):
            run, lines = self.node.logs(pod)
            attempt = pod["metadata"]["labels"].get(LABEL_ATTEMPT, "?")
            for line in lines[shown.get(run, 0) :]:
                if SHOWN.match(line) and (index == 0 or not line.startswith("step ")):
                    self.say(f"  rank {index}, {pod['metadata']['name']} (attempt {attempt}) | {line}")
            shown[run] = len(lines)

    def _kill_worker(self, name: str) -> bool:
        victim = self._ranks(name).get(1)
        statuses = (victim or {}).get("status", {}).get("containerStatuses") or []
        if victim is None or not statuses or "running" not in statuses[0].get("state", {}):
            return False
        what = self.node.kill(victim)
        self.say(
            f"3/5 SIGKILL to rank 1's trainer in {victim['metadata']['name']} ({what}): a rank is lost, "
            "so the whole gang restarts and resumes from the last checkpoint"
        )
        return True

    def finish(self, name: str, job: dict[str, Any]) -> bool:
        s = job.get("status") or {}
        t = s.get("throughput") or {}
        if s.get("state") != "Succeeded":
            reasons = "; ".join(f"{c.get('type')}: {c.get('message')}" for c in s.get("conditions") or [])
            raise DemoError(f"{name} ended {s.get('state')}: {reasons}")
        if self.stage != "resumed":
            raise DemoError(f"{name} finished before the story was told (it got as far as: {self.stage}); "
                            "this machine trained faster or slower than the demo's pacing assumes")  # fmt: skip
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
        if self.node_started:
            self.node.stop()
        if self.operator is not None and self.operator.poll() is None:
            process.end(self.operator, grace=15)
        if self.cluster_up:
            localcluster.down(self.state / "cluster", log=lambda line: None)
        self.say("stopped the operator, the node and the control plane")


def _steady(readings: list[tuple[float, float]]) -> bool:
    """Whether the readings (oldest first) cover the last BASELINE_STEADY_S and agree within BASELINE_SPREAD."""
    if not readings or readings[-1][0] - readings[0][0] < BASELINE_STEADY_S:
        return False
    recent = [v for at, v in readings if at >= readings[-1][0] - BASELINE_STEADY_S]
    return max(recent) <= min(recent) * (1 + BASELINE_SPREAD)


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
