"""Helpers of the leader-election and chaos tests: a fleet of operator processes sharing a Lease, a ledger
of every pod the API server saw created, workloads of known outcome, and the checks of the end state.

Each workload kind fixes what its pods do (kwok's sim annotations on the template), so what the job must
end as is known in advance: how many attempts the failures dictate, its state, its restarts.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from localcluster import sim
from tests.plugins.operator import JobClient, OperatorProcess, job_manifest

LABEL_JOB, LABEL_ATTEMPT, LABEL_INDEX = "phalanx.dev/job-name", "phalanx.dev/attempt", "phalanx.dev/replica-index"
ENDED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Kind:
    """A workload whose pods end one known way, and what its job must then show."""

    annotations: dict[str, str]
    state: str | None  # None: the test deletes the job while it runs
    attempt: int = 1
    restarts: int = 0
    reason: str | None = None
    backoff_limit: int = 2


KINDS: dict[str, Kind] = {
    "succeed": Kind(sim.outcome_annotations(sim.SUCCEED, delay="2s"), "Succeeded", reason="AllReplicasSucceeded"),
    # Retryable every time: attempts 1, 2 and 3 fail, then backoffLimit 2 is spent.
    "retry": Kind(
        sim.outcome_annotations(sim.FAIL, 137, "OOMKilled", delay="1s"),
        "Failed",
        attempt=3,
        restarts=2,
        reason="BackoffLimitExceeded",
    ),
    "fatal": Kind(sim.outcome_annotations(sim.FAIL, 1, delay="1s"), "Failed", reason="PodFailed"),
    "deleted": Kind({}, None),
    # Runs until the test scales it; then attempt 2 at the new size, never counted as a failure.
    "scaled": Kind({}, "Running", attempt=2),
}


def manifest(name: str, kind: str, replicas: int) -> dict[str, Any]:
    k = KINDS[kind]
    return job_manifest(
        name, replicas=replicas, podAnnotations=dict(k.annotations), runPolicy={"backoffLimit": k.backoff_limit}
    )


@dataclass
class Created:
    name: str
    job: str
    attempt: int
    index: int


class PodLedger:
    """Every pod ADDED in a namespace (by UID), from one watch that resumes where it left off."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.ns = core, namespace
        self.created: dict[str, Created] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodLedger:
        self._rv = self.core.list_namespaced_pod(self.ns, label_selector=LABEL_JOB).metadata.resource_version
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                w = watch.Watch()
                for event in w.stream(
                    self.core.list_namespaced_pod,
                    self.ns,
                    label_selector=LABEL_JOB,
                    resource_version=self._rv,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                ):
                    if event["type"] == "ERROR":  # 410 Gone: the events in between are lost
                        raise RuntimeError(f"pod watch: {event['raw_object']}")
                    self._rv = event["raw_object"]["metadata"]["resourceVersion"]
                    pod = event["object"]
                    if event["type"] == "ADDED" and pod.metadata.uid not in self.created:
                        labels = pod.metadata.labels or {}
                        self.created[pod.metadata.uid] = Created(
                            pod.metadata.name,
                            labels[LABEL_JOB],
                            int(labels.get(LABEL_ATTEMPT, 0)),
                            int(labels.get(LABEL_INDEX, -1)),
                        )
                    if self._stop.is_set():
                        w.stop()
        except BaseException as exc:  # a 410 would mean events were lost: the checks must not pass then
            self.error = exc

    def attempts(self, job: str) -> set[int]:
        return {c.attempt for c in self.created.values() if c.job == job}


class Fleet:
    """Operator processes that contend for one Lease (the fixture's); a killed one is replaced at once,
    as a Deployment's ReplicaSet would."""

    def __init__(self, start: Callable[..., OperatorProcess], coordination: client.CoordinationV1Api, **env: str):
        self._start, self.coordination, self.env = start, coordination, env
        self.members: list[OperatorProcess] = []
        self.kills = 0

    def start(self, n: int = 1) -> None:
        for _ in range(n):
            self.members.append(self._start(env=self.env))

    @property
    def lease_name(self) -> str:
        return self.members[0].env["PHALANX_LEASE_NAME"]

    def lease(self) -> client.V1Lease | None:
        ns = self.members[0].env["PHALANX_LEASE_NAMESPACE"]
        try:
            lease: client.V1Lease = self.coordination.read_namespaced_lease(self.lease_name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    def holder(self) -> str | None:
        lease = self.lease()
        return (lease.spec.holder_identity or None) if lease is not None else None

    def leader(self) -> OperatorProcess | None:
        holder = self.holder()
        return next((m for m in self.members if m.env["PHALANX_POD_NAME"] == holder and m.alive()), None)

    def kill(self, member: OperatorProcess) -> None:
        member.kill()
        self.members.remove(member)
        self.kills += 1
        self.start()

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL the leader (three times in four) or a standby, and start a replacement."""
        leader = self.leader()
        others = [m for m in self.members if m is not leader]
        victim = leader if leader is not None and (not others or rng.random() < 0.75) else rng.choice(others)
        self.kill(victim)


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def wait_settled(jobs: JobClient, plan: dict[str, str], timeout: float) -> None:
    """Until every job is in its kind's state (or gone, with its pods, when deleted)."""
    deadline = time.monotonic() + timeout
    left: list[str] = []
    while time.monotonic() < deadline:
        listed = jobs.custom.list_namespaced_custom_object("phalanx.dev", "v1alpha1", jobs.ns, "trainingjobs")
        states = {j["metadata"]["name"]: (j.get("status") or {}) for j in listed["items"]}
        pods = jobs.core.list_namespaced_pod(jobs.ns, label_selector=LABEL_JOB).items
        with_pods = {(p.metadata.labels or {}).get(LABEL_JOB) for p in pods}
        left = []
        for name, kind in plan.items():
            want = KINDS[kind]
            if want.state is None:
                if name in states or name in with_pods:
                    left.append(f"{name} (deleted): still there")
            elif name not in states or states[name].get("state") != want.state:
                why = [f"{c['type']}={c['status']} {c['reason']}: {c.get('message', '')[:120]}"
                       for c in states.get(name, {}).get("conditions") or [] if c["status"] != "True"]  # fmt: skip
                left.append(f"{name} ({kind}): {states.get(name, {}).get('state')} {why[:2]}")
            elif want.state == "Running" and states[name].get("attempt") != want.attempt:
                left.append(f"{name} ({kind}): attempt {states[name].get('attempt')}")
        if not left:
            return
        time.sleep(1)
    raise AssertionError(f"not settled after {timeout:.0f}s: {left[:20]} ({len(left)} jobs)")


def verify(jobs: JobClient, ledger: PodLedger, plan: dict[str, str], replicas: dict[str, int]) -> Outcome:
    """The end state against what each job's pods dictate (see the module docstring)."""
    out = Outcome()
    out.check(ledger.error is None, f"the pod watch failed, events may be lost: {ledger.error!r}")
    # 1. No pod created twice within one attempt (a rank's pod of an attempt exists at most once).
    per_rank = collections.Counter((c.job, c.attempt, c.index) for c in ledger.created.values())
    for (job, attempt, index), n in sorted(per_rank.items()):
        out.check(n == 1, f"{job}: rank {index} of attempt {attempt} was created {n} times")
    names = collections.Counter(c.name for c in ledger.created.values())
    out.check(all(n == 1 for n in names.values()), f"pod names created twice: {[k for k, n in names.items() if n > 1]}")
    listed = jobs.custom.list_namespaced_custom_object("phalanx.dev", "v1alpha1", jobs.ns, "trainingjobs")
    bodies = {j["metadata"]["name"]: j for j in listed["items"]}
    pods = jobs.core.list_namespaced_pod(jobs.ns, label_selector=LABEL_JOB).items
    for name, kind in sorted(plan.items()):
        want = KINDS[kind]
        if want.state is None:
            out.check(name not in bodies, f"{name}: deleted, but still exists")
            continue
        status = bodies[name].get("status") or {}
        # 2. No attempt beyond (or short of) what the failures dictate, none skipped, restarts as dictated.
        out.check(
            (status.get("attempt"), status.get("restarts", 0)) == (want.attempt, want.restarts),
            f"{name} ({kind}): attempt {status.get('attempt')}, restarts {status.get('restarts', 0)}; "
            f"its failures dictate attempt {want.attempt}, restarts {want.restarts}",
        )
        seen = ledger.attempts(name)
        out.check(seen == set(range(1, want.attempt + 1)), f"{name} ({kind}): pods created for attempts {sorted(seen)}")
        # 3. The state its pods dictate.
        current = [p for p in pods if p.metadata.labels.get(LABEL_JOB) == name]
        phases = sorted(p.status.phase for p in current)
        ended = next((c for c in status.get("conditions") or [] if c["type"] in ENDED and c["status"] == "True"), None)
        out.check(status.get("state") == want.state, f"{name} ({kind}): state {status.get('state')}, want {want.state}")
        if want.state == "Succeeded":
            out.check(phases == ["Succeeded"] * replicas[name], f"{name}: Succeeded with pods {phases}")
        elif want.state == "Failed":
            out.check("Failed" in phases and "Running" not in phases, f"{name}: Failed with pods {phases}")
        elif want.state == "Running":
            out.check(phases == ["Running"] * replicas[name], f"{name}: Running with pods {phases}")
        if want.reason is not None:
            out.check(
                ended is not None and ended["reason"] == want.reason,
                f"{name} ({kind}): ended {ended and ended['reason']}, want {want.reason}",
            )
    # 4. No orphan: every pod belongs to a job that exists (by UID) and to that job's current attempt.
    for p in pods:
        job = bodies.get(p.metadata.labels.get(LABEL_JOB, ""))
        owners = [o.uid for o in p.metadata.owner_references or []]
        out.check(job is not None and job["metadata"]["uid"] in owners, f"orphan pod {p.metadata.name}")
        if job is not None:
            attempt = (job.get("status") or {}).get("attempt")
            out.check(
                p.metadata.labels.get(LABEL_ATTEMPT) == str(attempt),
                f"pod {p.metadata.name} of an old attempt left (job at attempt {attempt})",
            )
    return out
