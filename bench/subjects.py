"""The three subjects: phalanx, the limit baseline and Kubeflow's training operator. Each runs as its own
process(es) next to the bench process, which only submits (through the client process) and watches."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench import REPO, kube, kubeflow, procstat
from bench.workloads import KUBEFLOW_JOB_LABEL, JobSpec
from localcluster import process
from phalanx.core import names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(str(REPO / p) for p in ("", "operator", "trainers", "dev"))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class Reply:
    op: str
    id: int | None
    error: str | None
    t: float


class ClientProcess:
    """`python -m bench.client MODE ...`: one JSON command per line in, one reply per command out."""

    def __init__(self, mode: str, kubeconfig: Path, concurrency: int, log: Path) -> None:
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.client", mode, str(kubeconfig), str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=_env(),
            cwd=REPO,
            text=True,
        )
        self.replies: dict[int, Reply] = {}
        self.errors: list[str] = []
        self._next = 0
        self._cond = threading.Condition()
        self._ready: queue.Queue[bool] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"client-{mode}").start()
        try:
            self._ready.get(timeout=60)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"bench client ({mode}) did not start; see {log}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            d = json.loads(line)
            if d["op"] == "ready":
                self._ready.put(True)
                continue
            with self._cond:
                if d["id"] is not None:
                    self.replies[d["id"]] = Reply(d["op"], d["id"], d["error"], d["t"])
                if d["error"]:
                    self.errors.append(f"{d['op']}: {d['error']}")
                self._cond.notify_all()

    def send(self, op: str, **fields: Any) -> int:
        assert self.proc.stdin is not None
        with self._cond:
            self._next += 1
            cid = self._next
        self.proc.stdin.write(json.dumps({"op": op, "id": cid, **fields}) + "\n")
        self.proc.stdin.flush()
        return cid

    def wait(self, ids: list[int], timeout: float) -> list[Reply]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(i in self.replies for i in ids):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"client: {sum(i in self.replies for i in ids)}/{len(ids)} commands done")
                self._cond.wait(min(left, 1.0))
            return [self.replies[i] for i in ids]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@dataclass
class Subject:
    """One thing being measured. `pid` is the process whose footprint is reported."""

    kubeconfig: Path
    logs: Path
    concurrency: int = 16
    client: ClientProcess | None = None
    proc: subprocess.Popen[bytes] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    name: ClassVar[str] = ""
    mode: ClassVar[str] = ""
    job_label: ClassVar[str] = names.LABEL_JOB
    whole_gang_restart: ClassVar[bool] = True  # a failed rank restarts the whole gang
    services_per_job: ClassVar[str] = "1"  # "1" or "workers"

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start_controller()
        self.client = ClientProcess(self.mode, self.kubeconfig, self.concurrency, self.logs / f"client-{self.name}.log")

    def start_controller(self) -> None:
        pass

    def stop(self) -> None:
        if self.client:
            self.client.close()
            self.client = None
        if self.proc:
            process.end(self.proc)
        self.proc = None

    @property
    def pid(self) -> int:
        if self.proc is not None:
            return self.proc.pid
        assert self.client is not None
        return self.client.pid

    def submit(self, ns: str, job: JobSpec) -> int:
        assert self.client is not None
        return self.client.send("submit", ns=ns, job=job.to_json())

    def delete(self, ns: str, name: str) -> int:
        assert self.client is not None
        return self.client.send("delete", ns=ns, name=name)

    def arm_recovery(self, ns: str, job: JobSpec) -> int | None:
        """The baseline restarts gangs itself; operators need nothing."""
        return None

    def rank_pod(self, job: str, rank: int) -> str:
        """The pod of `rank` in the job's first gang (attempt 1)."""
        return names.pod_name(job, rank, 1)

    def expected_services(self, workers: int) -> int:
        return workers if self.services_per_job == "workers" else 1

    def _wait_ready(self, url: str, what: str, timeout: float = 120.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}; see {self.logs}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s ({url}); see {self.logs}")
        # Caches filled: wait until its start-up work (lists of nodes, pods, jobs) is over.
        procstat.wait_quiet(self.proc.pid, threshold=0.03, window=3.0, timeout=90)


class Baseline(Subject):
    name = "baseline"
    mode = "baseline"

    def arm_recovery(self, ns: str, job: JobSpec) -> int | None:
        assert self.client is not None
        return self.client.send("recover", ns=ns, job=job.to_json(), timeout=600)


PROFILE_ENV = "PHALANX_BENCH_PROFILE"


def attach_profiler(pid: int, logs: Path) -> subprocess.Popen[bytes] | None:
    """Opt-in ($PHALANX_BENCH_PROFILE=DIR): sample the ready operator with `py-spy record` until it
    exits, one raw (folded stacks) profile per start in DIR. Off by default: the sampler costs CPU."""
    out = os.environ.get(PROFILE_ENV)
    if not out:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / f"phalanx-{time.strftime('%Y%m%d-%H%M%S')}-{pid}.txt"
    cmd = ["py-spy", "record", "--format", "raw", "--rate", "100", "--nonblocking", "-p", str(pid), "-o", str(path)]
    with (logs / "py-spy.log").open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


class Phalanx(Subject):
    name = "phalanx"
    mode = "phalanx"
    workers: int = 8
    profiler: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        super().stop()
        if self.profiler is not None:  # py-spy writes its profile when the operator exits
            try:
                self.profiler.wait(60)
            except subprocess.TimeoutExpired:
                process.end(self.profiler)
            self.profiler = None

    def start_controller(self) -> None:
        port = free_port()
        self.settings = {
            "PHALANX_API_CONCURRENCY": str(self.concurrency),
            "PHALANX_WORKERS": str(self.workers),
            "client QPS/burst": "none (the python client has no rate limiter)",
            "PHALANX_TELEMETRY": "off (simulated pods run no trainer; their kwok IPs must never be contacted)",
        }
        log = (self.logs / "phalanx-operator.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"],
            env=_env(
                KUBECONFIG=str(self.kubeconfig),
                PHALANX_OPERATOR_METRICS_PORT=str(port),
                PHALANX_API_CONCURRENCY=str(self.concurrency),
                PHALANX_WORKERS=str(self.workers),
                # kwok pods have fake IPs and no trainer: never scrape them (loopback-only machine).
                PHALANX_TELEMETRY="off",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()
        self._wait_ready(f"http://127.0.0.1:{port}/metrics", "the phalanx operator")
        self.profiler = attach_profiler(self.proc.pid, self.logs)


class Kubeflow(Subject):
    name = "kubeflow"
    mode = "kubeflow"
    job_label = KUBEFLOW_JOB_LABEL
    whole_gang_restart = False  # ExitCode policy: only the failed replica is recreated
    services_per_job = "workers"  # one headless Service per replica
    threads: int = 1  # --controller-threads default (the Deployment in its manifests sets none)

    def start_controller(self) -> None:
        exe = kubeflow.binary()
        if not exe.is_file():
            raise kubeflow.KubeflowUnavailable(f"{exe} not built")
        metrics, probe, webhook = free_port(), free_port(), free_port()
        self.settings = {
            "version": kubeflow.VERSION,
            "controller-threads": self.threads,
            "client QPS/burst": "20/30 (controller-runtime's defaults; v1.8.1 has no flag for them)",
            "gang scheduling": "none (no --gang-scheduler-name: volcano/scheduler-plugins are not installed)",
        }
        log = (self.logs / "kubeflow-operator.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(exe),
                f"--kubeconfig={self.kubeconfig}",
                f"--metrics-bind-address=127.0.0.1:{metrics}",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                f"--webhook-server-port={webhook}",
                "--enable-scheme=pytorchjob",
                f"--controller-threads={self.threads}",
                "--zap-log-level=error",
            ],
            env={**os.environ, "MY_POD_NAMESPACE": kubeflow.NAMESPACE},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        stop = threading.Event()
        api = kube.api_client(self.kubeconfig, 2)
        mounter = threading.Thread(target=kubeflow.mount_certs, args=(api, stop), daemon=True)
        mounter.start()
        try:
            self._wait_ready(f"http://127.0.0.1:{probe}/readyz", "Kubeflow's training operator")
        finally:
            stop.set()
            mounter.join(5)
            api.close()

    def rank_pod(self, job: str, rank: int) -> str:
        return f"{job}-master-0" if rank == 0 else f"{job}-worker-{rank - 1}"


SUBJECTS: dict[str, type[Subject]] = {"baseline": Baseline, "phalanx": Phalanx, "kubeflow": Kubeflow}
