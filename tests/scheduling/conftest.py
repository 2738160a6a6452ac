"""Fixtures and helpers for the scheduling tests (real kube-scheduler, kwok GPU and TPU nodes).

- clean_accelerators (autouse): each test starts with every GPU and TPU free, so capacity numbers in
  messages are exact (namespaces of earlier tests are deleted without waiting).
- priority_classes: a factory for PriorityClasses (cluster-wide, removed after the test).
- extra_nodes: a factory adding kwok nodes (e.g. an A100 pool), removed after the test.
- PodWatch: records every pod event of a namespace, so a test can assert what NEVER happened
  (a pod left unschedulable, two gangs bound at once) rather than only what it saw at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, watch

from localcluster.nodes import add_nodes, delete_nodes
from localcluster.profiles import NodePool
from localcluster.testing import wait_for

GPU = "nvidia.com/gpu"
TPU = "google.com/tpu"
JOB_LABEL = "phalanx.dev/job-name"


def accelerators(pod: client.V1Pod) -> int:
    """GPUs and TPU chips the pod holds (extended resources always carry limits)."""
    total = 0
    for c in pod.spec.containers:
        limits = (c.resources.limits if c.resources else None) or {}
        total += int(limits.get(GPU, 0)) + int(limits.get(TPU, 0))
    return total


def live(pod: client.V1Pod) -> bool:
    return pod.status.phase not in ("Succeeded", "Failed")


@pytest.fixture(autouse=True)
def clean_accelerators(core_v1: client.CoreV1Api, api_client: client.ApiClient, namespace: str) -> Iterator[None]:
    def holders() -> list[str]:
        pods = core_v1.list_pod_for_all_namespaces().items
        return [f"{p.metadata.namespace}/{p.metadata.name}" for p in pods if live(p) and accelerators(p)]

    try:
        wait_for(lambda: not holders(), timeout=90, what="GPU/TPU pods of earlier tests to go away")
    except TimeoutError:
        pytest.fail(f"these pods still hold GPUs/TPUs, so capacity figures would be off: {holders()}")
    yield
    # The namespace is deleted without waiting, and its pods would keep their GPUs for their grace
    # period: remove the jobs, then the pods at once, so the next test starts with the cluster free.
    custom = client.CustomObjectsApi(api_client)
    custom.delete_collection_namespaced_custom_object("phalanx.dev", "v1alpha1", namespace, "trainingjobs")
    core_v1.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


@pytest.fixture
def priority_classes(api_client: client.ApiClient) -> Iterator[Callable[[str, int], str]]:
    scheduling = client.SchedulingV1Api(api_client)
    made: list[str] = []

    def make(name: str, value: int) -> str:
        # preemptionPolicy Never: the scheduler must not evict pods for these; the order of gang
        # admission is what is under test.
        body = {"metadata": {"name": name}, "value": value, "preemptionPolicy": "Never"}
        scheduling.create_priority_class(body)
        made.append(name)
        return name

    yield make
    for name in made:
        scheduling.delete_priority_class(name)


@pytest.fixture
def extra_nodes(core_v1: client.CoreV1Api) -> Iterator[Callable[[NodePool], list[str]]]:
    added: list[str] = []

    def add(pool: NodePool) -> list[str]:
        names = add_nodes(core_v1, pool)
        added.extend(names)
        return names

    yield add
    delete_nodes(core_v1, added)


@dataclass(frozen=True)
class PodState:
    name: str
    job: str
    gated: bool
    node: str | None
    phase: str
    unschedulable: str | None  # the scheduler's message, when PodScheduled=False/Unschedulable


class PodWatch:
    """Every state every pod of the namespace went through, in order, from a watch in a thread."""

    def __init__(self, core_v1: client.CoreV1Api, namespace: str) -> None:
        self.core, self.ns = core_v1, namespace
        self.history: list[dict[str, PodState]] = []  # snapshot of all pods after each event
        self._current: dict[str, PodState] = {}
        self._watch = watch.Watch()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._watch.stop()
        self._thread.join(10)

    def _run(self) -> None:
        version: str | None = None
        while not self._stopped.is_set():
            try:
                for event in self._watch.stream(
                    self.core.list_namespaced_pod, self.ns, label_selector=JOB_LABEL, resource_version=version
                ):
                    self._record(event["type"], event["object"])
                    version = event["object"].metadata.resource_version
            except Exception:  # the stream ends on server timeouts and when the namespace goes away
                if self._stopped.wait(0.2):
                    return

    def _record(self, type_: str, pod: client.V1Pod) -> None:
        cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        unschedulable = cond.message if cond and cond.status == "False" and cond.reason == "Unschedulable" else None
        state = PodState(
            pod.metadata.name,
            pod.metadata.labels[JOB_LABEL],
            bool(pod.spec.scheduling_gates),
            pod.spec.node_name,
            pod.status.phase,
            unschedulable,
        )
        with self._lock:
            if type_ == "DELETED":
                self._current.pop(state.name, None)
            else:
                self._current[state.name] = state
            self.history.append(dict(self._current))

    def snapshots(self) -> list[dict[str, PodState]]:
        with self._lock:
            return list(self.history)

    def unschedulable(self) -> list[PodState]:
        """Every pod state seen with the scheduler's Unschedulable verdict (a half-placed gang has them)."""
        return [s for snap in self.snapshots() for s in snap.values() if s.unschedulable]

    def bound_at_once(self, *jobs: str) -> bool:
        """Did any moment have live pods of all `jobs` bound to nodes together?"""
        for snap in self.snapshots():
            holding = {s.job for s in snap.values() if s.node and s.phase not in ("Succeeded", "Failed")}
            if set(jobs) <= holding:
                return True
        return False


@pytest.fixture
def pod_watch(core_v1: client.CoreV1Api, namespace: str) -> Iterator[PodWatch]:
    with PodWatch(core_v1, namespace) as w:
        yield w


def gpu_job(name: str, replicas: int, gpus: int = 8, **spec: Any) -> dict[str, Any]:
    from tests.plugins.operator import job_manifest

    resources = {"gpus": gpus, **spec.pop("resources", {})}
    return job_manifest(name, replicas=replicas, resources=resources, **spec)


def nodes_of(pods: list[client.V1Pod]) -> list[str]:
    return [p.spec.node_name for p in pods]


def all_running(n: int) -> Callable[[list[client.V1Pod]], bool]:
    def check(pods: list[client.V1Pod]) -> bool:
        return len(pods) == n and all(p.status.phase == "Running" for p in pods)

    return check
