"""Fixtures for tests that run the phalanx operator against the real local control plane.

- crd (session): the generated CRD applied and Established.
- operator (module): the operator running in this process under kopf.testing.KopfRunner with a fresh
  handler registry (so several operators can run one after another in one test process).
- operator_process: a factory that starts the operator as a separate process (`python -m
  phalanx.controller`), for tests that kill it or run it with other credentials. The operators one
  test starts contend for one Lease of their own (short timings: a killed one is replaced in seconds).
- jobs: helpers to create TrainingJobs and wait on them (JobClient).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import process
from localcluster.testing import Kubectl

REPO = Path(__file__).resolve().parents[2]
# kwok gives simulated pods made-up private addresses: every operator the tests start (in process or as a
# subprocess, which inherits this) may contact trainer pods only on this machine.
os.environ.setdefault("PHALANX_SCRAPE_NETWORKS", "127.0.0.0/8")
CRD = REPO / "crds" / "phalanx.dev_trainingjobs.yaml"
GROUP, VERSION, PLURAL = "phalanx.dev", "v1alpha1", "trainingjobs"
# Leader-election timings for the operators the tests start: a SIGKILLed leader's lease runs out in
# 4 s, and a standby looks every half second.
TEST_LEASE = {
    "PHALANX_LEASE_NAMESPACE": "default",
    "PHALANX_LEASE_DURATION_SECONDS": "4",
    "PHALANX_LEASE_RENEW_DEADLINE_SECONDS": "3",
    "PHALANX_LEASE_RETRY_PERIOD_SECONDS": "0.5",
}


def lease_settings(name: str, identity: str = "") -> Any:
    """LeaseSettings of TEST_LEASE for an operator run in this process."""
    from phalanx.core.lease import LeaseSettings

    env = {**TEST_LEASE, "PHALANX_LEASE_NAME": name, "PHALANX_POD_NAME": identity or f"{name}-in-process"}
    return LeaseSettings.from_env(env)


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl, kubeconfig: Path) -> Path:
    kubectl.apply_crd(CRD)
    os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf's login and the operator's client read it
    return CRD


@pytest.fixture(scope="module")
def operator(crd: Path) -> Iterator[Any]:
    import kopf
    from kopf.testing import KopfRunner

    from phalanx.controller import settings as operator_settings
    from phalanx.controller.handlers import build_registry
    from phalanx.controller.operator import Operator

    # The session's settings as the operator process would read them (PHALANX_SCRAPE_NETWORKS above).
    op = Operator(operator_settings.read(), lease=lease_settings(f"phalanx-test-{uuid.uuid4().hex[:8]}"))
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 30
    settings.watching.client_timeout = 40
    settings.networking.connect_timeout = 10
    registry = build_registry(op)
    with KopfRunner(
        ["run", "--standalone", "--all-namespaces"], registry=registry, settings=settings, timeout=60
    ) as runner:
        yield op
    assert runner.exception is None, runner.exception


class OperatorProcess:
    """The operator as its own process: killable with SIGKILL, like a crashed pod."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.env = full_env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PHALANX_OPERATOR_METRICS_PORT": "0",
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainers")]),
            **(env or {}),
        }
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.controller"], env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends on a pod's deletion: kopf shuts down and the lease is released."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        process.end(self.proc, grace=15)
        self._log.close()


@pytest.fixture
def operator_process(crd: Path, kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []
    lease = {**TEST_LEASE, "PHALANX_LEASE_NAME": f"phalanx-test-{uuid.uuid4().hex[:8]}"}

    def start(env: dict[str, str] | None = None, kubeconfig_path: Path | None = None) -> OperatorProcess:
        n = len(started)
        full = {**lease, "PHALANX_POD_NAME": f"operator-{n}", **(env or {})}
        p = OperatorProcess(kubeconfig_path or kubeconfig, tmp_path / f"operator-{n}.log", full)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def job_manifest(name: str, replicas: int = 2, framework: str = "pytorch", **spec: Any) -> dict[str, Any]:
    """A TrainingJob whose pods kwok runs; spec keys (camelCase) override the defaults."""
    annotations = spec.pop("podAnnotations", {})
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "framework": framework,
            "replicas": replicas,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "containers": [{"name": "trainer", "image": "trainer:test", "command": ["python", "-m", "x"]}]
                },
            },
            **spec,
        },
    }
    return body


class JobClient:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return result

    def patch(self, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def pods(self, name: str) -> list[client.V1Pod]:
        items = self.core.list_namespaced_pod(self.ns, label_selector=f"phalanx.dev/job-name={name}").items
        return sorted(items, key=lambda p: p.metadata.name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        conds = (self.get(name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def wait(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60, what: str = "condition"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.get(name)
            if predicate(job):
                return job
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} on {self.ns}/{name}; "
            f"status: {yaml.safe_dump(job.get('status'))}"
        )

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait(name, lambda j: (j.get("status") or {}).get("state") == state, timeout, f"state {state}")

    def wait_pods(
        self, name: str, predicate: Callable[[list[client.V1Pod]], bool], timeout: float = 60, what: str = "pods"
    ) -> list[client.V1Pod]:
        deadline = time.monotonic() + timeout
        pods: list[client.V1Pod] = []
        while time.monotonic() < deadline:
            pods = self.pods(name)
            if predicate(pods):
                return pods
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} of {self.ns}/{name}: {[_pod_summary(p) for p in pods]}"
        )


def _pod_summary(pod: client.V1Pod) -> tuple[str, str, str, bool]:
    """Name, phase, attempt label and whether it is being deleted: what a failed wait needs to show."""
    labels = pod.metadata.labels or {}
    return (
        pod.metadata.name,
        pod.status.phase,
        labels.get("phalanx.dev/attempt", "-"),
        bool(pod.metadata.deletion_timestamp),
    )


@pytest.fixture
def jobs(api_client: client.ApiClient, namespace: str, crd: Path) -> JobClient:
    return JobClient(api_client, namespace)
