"""Scaling efficiency end to end, checked against a real Prometheus.

What runs for real: the local control plane (apiserver, scheduler, kwok), the operator as its own
process, the reference PyTorch DDP trainer (CPU, Gloo) as real processes with 1 and then 2 ranks, and
Prometheus (Debian's package) scraping the operator and the trainers.

What is staged, and why: kwok "runs" the TrainingJob's pods (they are scheduled, admitted and marked
Running by the real control plane), but no container starts, and kwok gives each pod a made-up IP.
So the test plays the kubelet's part for the one thing that matters here: it starts the trainer
process each pod stands for, with the env the operator gave that pod (rank, world size, attempt,
master, metrics port), on its own loopback address 127.0.0.x, and writes that address into the pod's
status.podIP. The operator then scrapes podIP:spec.metrics.port exactly as in a cluster. Prometheus
scrapes the same endpoints through static configs whose target labels (namespace, pod, trainingjob)
are what the chart's trainer PodMonitor sets by relabeling.

Checks: the efficiency the operator writes to status (and shows in `kubectl get tj`) matches the one
computed from Prometheus's data within 5 %; every PromQL expression and variable of the generated
dashboards returns data; `promtool check metrics` passes on the operator's and a trainer's /metrics.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster import sim
from localcluster.testing import Kubectl
from phalanx.generate import dashboards
from tests.metrics.promserver import Prometheus, find_binary, free_port
from tests.plugins.operator import REPO, JobClient, OperatorProcess, job_manifest

pytestmark = [pytest.mark.training, pytest.mark.timeout(900)]

JOB = "effjob"
WINDOW_S = 20  # the operator's rate window and Prometheus's rate() range below
PHASE_S = 35  # seconds each world size trains once its first step is done
SHIM = REPO / "tests" / "metrics" / "pod_ip_shim.py"
TRAINER_ARGS = [
    "--steps", "1000000", "--batch-size", "32", "--step-sleep", "0.02", "--log-every", "200",
    "--checkpoint-every-steps", "500", "--threads", "1",
]  # fmt: skip


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        text: str = r.read().decode()
        return text


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class Trainer:
    """One trainer process standing in for one pod, serving metrics on the pod's address."""

    def __init__(self, tmp: Path, ip: str, env: dict[str, str], attempt: int, rank: int) -> None:
        self.ip, self.port = ip, int(env["PHALANX_METRICS_PORT"])
        self.log = tmp / f"trainer-a{attempt}-r{rank}.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PHALANX_", "MASTER_", "PET_"))}
        full.update(env)
        full.update(
            POD_IP=ip,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("operator", "trainers", "dev", ".")),
        )
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(SHIM), *TRAINER_ARGS], env=full, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )

    def metrics(self) -> str:
        return http_text(f"http://{self.ip}:{self.port}/metrics")

    def wait_stepping(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if (metric_value(self.metrics(), "phalanx_trainer_samples_total") or 0) > 0:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"trainer on {self.ip} made no step in {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends: the trainer saves a checkpoint and exits 143."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pod_env(pod: client.V1Pod) -> dict[str, str]:
    """The env the operator put into the pod's trainer container."""
    container = next(c for c in pod.spec.containers if c.name == "trainer")
    return {e.name: e.value for e in container.env or [] if e.value is not None}


def point_pod_at(core: client.CoreV1Api, ns: str, name: str, ip: str) -> None:
    """Write the address of the process standing in for the pod into its status (a JSON patch
    replaces kwok's made-up podIP and podIPs as a whole)."""
    patch = [
        {"op": "replace", "path": "/status/podIP", "value": ip},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]},
    ]
    core.patch_namespaced_pod_status(name, ns, patch)


def running_pods(jobs: JobClient, replicas: int, attempt: int) -> list[client.V1Pod]:
    def ready(pods: list[client.V1Pod]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(live) == replicas and all(
            p.status.phase == "Running" and p.metadata.labels["phalanx.dev/attempt"] == str(attempt) for p in live
        )

    pods = jobs.wait_pods(JOB, ready, timeout=120, what=f"{replicas} running pods of attempt {attempt}")
    return sorted(pods, key=lambda p: int(p.metadata.labels["phalanx.dev/replica-index"]))


def start_gang(jobs: JobClient, tmp: Path, replicas: int, attempt: int, ckpt: Path, master_port: int) -> list[Trainer]:
    pods = running_pods(jobs, replicas, attempt)
    trainers = []
    for i, pod in enumerate(pods):
        env = pod_env(pod)
        ip = f"127.0.0.{2 + i}"
        # In the cluster MASTER_ADDR is rank 0's DNS name; here rank 0's process is on 127.0.0.2.
        env.update(MASTER_ADDR="127.0.0.2", MASTER_PORT=str(master_port), PHALANX_CHECKPOINT_DIR=str(ckpt))
        assert env["PHALANX_ATTEMPT"] == str(attempt) and env["WORLD_SIZE"] == str(replicas)
        trainers.append(Trainer(tmp, ip, env, attempt, i))
        point_pod_at(jobs.core, jobs.ns, pod.metadata.name, ip)
    return trainers


def throughput(job: dict[str, Any]) -> dict[str, Any]:
    return dict((job.get("status") or {}).get("throughput") or {})


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):  # $__range_s before $__range
        expr = expr.replace(name, values[name])
    return expr


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in result) if math.isfinite(v)]


@pytest.fixture
def tport() -> int:
    """A port free on both trainer addresses (the job's spec.metrics.port, the same for every pod)."""
    while True:
        port = free_port("127.0.0.2")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.3", port))
            except OSError:
                continue
        return port


@pytest.fixture
def started() -> Iterator[list[Trainer]]:
    """Trainer processes of the test; killed at teardown whatever happened."""
    trainers: list[Trainer] = []
    yield trainers
    for t in trainers:
        t.kill()


def test_efficiency_matches_prometheus_and_every_dashboard_query_has_data(
    jobs: JobClient,
    namespace: str,
    kubectl: Kubectl,
    operator_process: Callable[..., OperatorProcess],
    tmp_path: Path,
    tport: int,
    started: list[Trainer],
) -> None:
    promtool = find_binary("promtool")
    op_port = free_port()
    operator = operator_process(
        {
            "PHALANX_OPERATOR_METRICS_PORT": str(op_port),
            "PHALANX_SCRAPE_INTERVAL_SECONDS": "2",
            "PHALANX_SCRAPE_WINDOW_SECONDS": str(WINDOW_S),
            "PHALANX_TELEMETRY_MIN_UPDATE_SECONDS": "4",
        }
    )
    labels = {"namespace": namespace, "trainingjob": JOB}
    prom = Prometheus(
        tmp_path / "prometheus",
        [
            {"job_name": "phalanx-operator", "static_configs": [{"targets": [f"127.0.0.1:{op_port}"]}]},
            {
                "job_name": "phalanx-trainers",
                "static_configs": [
                    {"targets": [f"127.0.0.{2 + i}:{tport}"], "labels": {**labels, "pod": f"{JOB}-worker-{i}"}}
                    for i in range(2)
                ],
            },
        ],
    )
    try:
        # Prometheus must have read the operator before the job starts: a counter or histogram that is
        # already at 1 on the first scrape never shows an increase.
        deadline = time.monotonic() + 120
        while prom.value('up{job="phalanx-operator"}') != 1.0:
            assert time.monotonic() < deadline, f"Prometheus never scraped the operator: {prom.targets_up()}"
            time.sleep(0.5)
        ckpt = tmp_path / "checkpoints"
        jobs.create(job_manifest(JOB, replicas=1, metrics={"port": tport}))

        # --- world size 1 -------------------------------------------------------------------------
        started += start_gang(jobs, tmp_path, 1, 1, ckpt, free_port("127.0.0.2"))
        started[0].wait_stepping()
        time.sleep(PHASE_S)
        t1 = time.time()
        job1 = jobs.get(JOB)
        x1 = prom.value(f'sum(rate(phalanx_trainer_samples_total{{trainingjob="{JOB}"}}[{WINDOW_S}s]))', t1)
        assert started[0].stop() == 143  # saved a checkpoint on SIGTERM
        one = throughput(job1)
        assert x1 and x1 > 0, "Prometheus has no 1-rank throughput"
        assert one.get("baselineReplicas") == 1 and one.get("scalingEfficiency") == 1.0, job1.get("status")
        baseline = float(one["baselineSamplesPerSecond"])
        assert baseline == pytest.approx(x1, rel=0.05), f"operator baseline {baseline} vs Prometheus X(1) {x1}"

        # --- kubectl scale to 2 ---------------------------------------------------------------------
        kubectl("scale", f"trainingjob/{JOB}", "--replicas=2", "-n", namespace)
        started += start_gang(jobs, tmp_path, 2, 2, ckpt, free_port("127.0.0.2"))
        for t in started[1:]:
            t.wait_stepping()
        time.sleep(PHASE_S)
        t2 = time.time()
        job2 = jobs.get(JOB)
        x2 = prom.value(f'sum(rate(phalanx_trainer_samples_total{{trainingjob="{JOB}"}}[{WINDOW_S}s]))', t2)
        two = throughput(job2)
        assert x2 and x2 > 0, "Prometheus has no 2-rank throughput"
        expected = x2 / (2 * x1)
        efficiency = two.get("scalingEfficiency")
        print(f"X(1) prometheus {x1:.1f} operator {baseline}; X(2) prometheus {x2:.1f} operator "
              f"{two.get('samplesPerSecond')}; E(2) prometheus {expected:.3f} operator {efficiency}")  # fmt: skip
        assert efficiency is not None, job2.get("status")
        assert efficiency == pytest.approx(expected, rel=0.05), f"operator E(2)={efficiency}, Prometheus {expected:.3f}"
        assert float(two["samplesPerSecond"]) == pytest.approx(x2, rel=0.05)
        # The baseline stays the one measured at 1 replica (refreshed by the last 1-rank reads after t1).
        assert two["baselineReplicas"] == 1 and two["baselineSamplesPerSecond"] == pytest.approx(x1, rel=0.05)
        assert 0 < two["goodput"] <= 1
        status = job2["status"]
        assert status["attempt"] == 2 and status["lastCheckpoint"]["step"] >= 500, status
        # The Efficiency column of `kubectl get tj` shows the number.
        table = kubectl("get", "tj", JOB, "-n", namespace).stdout.splitlines()
        row = dict(zip(table[0].split(), table[1].split(), strict=False))
        assert float(row["EFFICIENCY"]) == pytest.approx(efficiency), table

        # --- the job ends (its trainers keep serving, so Prometheus keeps fresh samples) -------------
        for pod in jobs.pods(JOB):
            sim.make_pod_succeed(jobs.core, namespace, pod.metadata.name)
        jobs.wait_state(JOB, "Succeeded", timeout=60)
        time.sleep(3)  # two scrapes of the operator after the job ended

        # --- every dashboard query returns data ------------------------------------------------------
        span = int(time.time() - prom.started) + 1
        values = {
            "$namespace": namespace,
            "$trainingjob": JOB,
            "$__rate_interval": "1m",
            "$__range_s": str(span),
            "$__range": f"{span}s",
        }
        empty, checked = [], 0
        for name in dashboards.DASHBOARDS:
            doc = json.loads((REPO / dashboards.DIRECTORY / name).read_text())
            for title, expr in dashboards.expressions(doc):
                result = prom.query(substitute(expr, values))
                checked += 1
                if not finite_values(result):
                    empty.append(f"{name} / {title}: {expr} -> {result}")
            for var, query in dashboards.variable_queries(doc):
                m = re.fullmatch(r"label_values\((.+), *(\w+)\)", substitute(query, values))
                assert m, query
                found = prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
                checked += 1
                if not found:
                    empty.append(f"{name} / variable {var}: {query}")
        assert checked >= 30
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        # The dashboard's own efficiency (its baseline: the range's history) tells the same story.
        dash = prom.value(substitute(dashboards.efficiency(), {**values, "$__rate_interval": f"{WINDOW_S}s"}))
        print(f"E(2) on the dashboard {dash}")
        assert dash == pytest.approx(efficiency, rel=0.1)

        # --- promtool check metrics on both expositions ---------------------------------------------------
        for what, text in (
            ("operator", http_text(f"http://127.0.0.1:{op_port}/metrics")),
            ("trainer", started[1].metrics()),
        ):
            res = subprocess.run(
                [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, check=False
            )
            assert res.returncode == 0, f"promtool check metrics on the {what}'s /metrics:\n{res.stdout}{res.stderr}"
        assert "telemetry: scraping trainer pods directly" in operator.log_path.read_text()
    except BaseException:
        print(f"--- operator log\n{operator.log_path.read_text()[-4000:]}")
        print(f"--- prometheus targets {prom.targets_up()}")
        for t in started:
            print(f"--- {t.log}\n{t.log.read_text()[-2000:]}")
        raise
    finally:
        prom.stop()
