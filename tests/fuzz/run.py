"""Apply generated manifests to the real apiserver, with the operator running, and judge the outcome.

Per manifest: refused by the apiserver with a message naming a field, or accepted and given a status
by the operator within STATUS_SECONDS (a bad spec the schema cannot see: Failed with InvalidSpec). A
job whose reconciles keep failing (ReconcileError) is a defect, and so is any traceback or failed
reconcile in the operator's log. At the end a canary job must still run and succeed.

Manifests go in batches: create (a few at a time), wait for every accepted job's status, delete the
batch; so live objects stay bounded and 2,000 manifests take a few minutes on 2 cores.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fuzz.generator import Case, Generator

GROUP, VERSION, PLURAL = "phalanx.dev", "v1alpha1", "trainingjobs"
STATUS_SECONDS = 30.0  # an accepted job without status.state after this long is a defect
BATCH = 100
PARALLEL = 4
# What the operator must never log: a traceback, or a reconcile that failed (no accepted spec may fail one).
LOG_DEFECTS = re.compile(r"Traceback \(most recent call last\)|reconcile \S+ failed")


@dataclass
class Report:
    cases: int = 0
    refused: int = 0
    accepted: int = 0
    invalid_spec: int = 0  # accepted, then Failed with InvalidSpec by the operator
    updates: int = 0  # accepted jobs whose spec was then changed by a mutated merge patch
    updates_refused: int = 0
    states: collections.Counter[str] = field(default_factory=collections.Counter)
    refusal_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    status_seconds_max: float = 0.0
    defects: list[str] = field(default_factory=list)
    log_defects: list[str] = field(default_factory=list)
    canary: str = "not run"
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"{self.cases} manifests in {self.seconds:.0f} s: {self.refused} refused by the apiserver naming a field, "
            f"{self.accepted} accepted ({self.invalid_spec} of them InvalidSpec); slowest first status "
            f"{self.status_seconds_max:.1f} s; {self.updates} spec updates ({self.updates_refused} refused); "
            f"canary {self.canary}",
            f"states of accepted jobs: {dict(self.states.most_common())}",
            f"refusals by field: {dict(self.refusal_kinds.most_common(12))}",
            f"defects: {len(self.defects)}; operator log defects: {len(self.log_defects)}",
        ]
        lines += [f"  defect: {d}" for d in self.defects[:30]]
        lines += [f"  log: {d}" for d in self.log_defects[:30]]
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not self.defects and not self.log_defects and self.canary == "Succeeded"


def names_field(body: dict[str, Any]) -> str | None:
    """The field a refusal names (the first cause's, else one named in the message), None if none."""
    causes = (body.get("details") or {}).get("causes") or []
    named = next((c["field"] for c in causes if c.get("field")), None)
    if named:
        return str(named)
    message = str(body.get("message", ""))
    match = re.search(r"\b((?:spec|metadata)(?:\.[\w\[\]\-/.]+)?|apiVersion|API version|kind)\b", message)
    return match.group(1) if match else None


def _field_kind(path: str) -> str:
    """spec.template.spec.containers[0].env[0].name -> spec.template.spec.containers.env.name (for counts)."""
    return re.sub(r"\[[^\]]*\]", "", path)[:60]


class Fuzz:
    def __init__(self, api: client.ApiClient, namespace: str, seed: int, log: Callable[[str], None] = print) -> None:
        self.api, self.ns, self.log, self.seed = api, namespace, log, seed
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.report = Report()

    def create(self, case: Case) -> tuple[Case, float | None]:
        """Create one manifest; (case, monotonic time of acceptance) or (case, None) when refused."""
        # Most as `kubectl apply` sends them (unknown fields refused); some as older clients do (pruned).
        validation = "Strict" if case.index % 5 else "Warn"
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, case.manifest, field_validation=validation
            )
        except ApiException as exc:
            self._refused(case, exc)
            return case, None
        except (ValueError, TypeError) as exc:  # the client would not even send it (not JSON-serializable)
            self.report.refused += 1
            self.report.refusal_kinds["(client)"] += 1
            self.log(f"client refused case {case.index}: {exc}")
            return case, None
        return case, time.monotonic()

    def update(self, case: Case) -> tuple[Case, bool]:
        """Change an accepted job's spec, by a valid change a user makes to a live job or by one more
        mutation, as a merge patch (what `kubectl patch` sends); (case, whether the apiserver took it)."""
        changed = Generator(self.seed * 100_003 + case.index)
        body = {"spec": copy.deepcopy(case.manifest.get("spec"))}
        what = changed.live_change(body) if case.index % 2 else changed.mutate(body, spec_only=True)
        mutated = Case(case.index, case.manifest, (*case.mutations, f"then {what}"))
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, case.name, {"spec": body["spec"]}, field_validation="Strict"
            )
        except ApiException as exc:
            self._refused(mutated, exc, counted=False)
            return mutated, False
        except (ValueError, TypeError):
            return mutated, False
        return mutated, True

    def _refused(self, case: Case, exc: ApiException, counted: bool = True) -> None:
        try:
            body = json.loads(exc.body or "{}")
        except ValueError:
            body = {"message": str(exc.body)}
        if exc.status is None or exc.status >= 500 or exc.status in (401, 403, 409, 429):
            self.report.defects.append(
                f"case {case.index} ({'; '.join(case.mutations)}): HTTP {exc.status}: {body.get('message')}"
            )
            return
        named = names_field(body)
        if named is None:
            self.report.defects.append(
                f"case {case.index} ({'; '.join(case.mutations)}): refused naming no field: {body.get('message')}"
            )
            return
        if counted:
            self.report.refused += 1
            self.report.refusal_kinds[_field_kind(named)] += 1

    def batch(self, cases: list[Case]) -> None:
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(self.create, cases))
        accepted = {c.name: (c, t) for c, t in results if t is not None}
        self.report.accepted += len(accepted)
        waiting = dict(accepted)
        deadline = time.monotonic() + STATUS_SECONDS
        while waiting and time.monotonic() < deadline:
            time.sleep(0.5)
            for job in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]:
                name = job["metadata"]["name"]
                status = job.get("status") or {}
                if name in waiting and status.get("state"):
                    case, at = waiting.pop(name)
                    self.report.status_seconds_max = max(self.report.status_seconds_max, time.monotonic() - at)
                    self._judge(case, status)
        for case, _ in waiting.values():
            self.report.defects.append(
                f"case {case.index} ({'; '.join(case.mutations)}): accepted but no status after {STATUS_SECONDS:g} s"
            )
        # A third of the accepted jobs then get their spec changed while they live (queued or running).
        with ThreadPoolExecutor(PARALLEL) as pool:
            updated = list(pool.map(self.update, [c for c, _ in accepted.values() if c.index % 3 == 0]))
        self.report.updates += len(updated)
        self.report.updates_refused += sum(1 for _, ok in updated if not ok)
        self._settle({c.name: c for c, ok in updated if ok})
        self._delete_all()

    def _settle(self, cases: dict[str, Case]) -> None:
        """The operator has looked at each changed job (observedGeneration caught up, or the job had already
        ended) within STATUS_SECONDS, and none of them is left with ReconcileError."""
        waiting = dict(cases)
        deadline = time.monotonic() + STATUS_SECONDS
        while waiting and time.monotonic() < deadline:
            time.sleep(0.5)
            jobs = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
            for name in set(waiting) - {j["metadata"]["name"] for j in jobs}:
                del waiting[name]  # deleted by the operator: ttlSecondsAfterFinished passed
            for job in jobs:
                name, status = job["metadata"]["name"], job.get("status") or {}
                seen = status.get("observedGeneration", 0) >= job["metadata"].get("generation", 1)
                if name in waiting and (seen or status.get("state") in ("Failed", "Succeeded")):
                    self._judge(waiting.pop(name), status, count=False)
        for case in waiting.values():
            self.report.defects.append(
                f"case {case.index} ({'; '.join(case.mutations)}): spec update not observed after {STATUS_SECONDS:g} s"
            )

    def _judge(self, case: Case, status: dict[str, Any], count: bool = True) -> None:
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        failed = conditions.get("Failed") or {}
        if count:
            self.report.states[status["state"]] += 1
            self.report.invalid_spec += failed.get("status") == "True" and failed.get("reason") == "InvalidSpec"
        error = conditions.get("ReconcileError") or {}
        if error.get("status") == "True":
            self.report.defects.append(
                f"case {case.index} ({'; '.join(case.mutations)}): ReconcileError: {error.get('message')}"
            )

    def _delete_all(self) -> None:
        """The batch's jobs, then their pods at once (garbage collection would take them more slowly)."""
        self.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, propagation_policy="Background"
        )
        deadline = time.monotonic() + 60
        while self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]:
            if time.monotonic() > deadline:
                self.report.defects.append("jobs of a batch still exist 60 s after their deletion")
                return
            time.sleep(0.3)
        self.core.delete_collection_namespaced_pod(self.ns, grace_period_seconds=0)

    def canary(self) -> None:
        """A plain job still runs and succeeds after all the junk (kwok plays its pods)."""
        from localcluster import sim

        manifest = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "metadata": {"name": "fz-canary"},
            "spec": {
                "framework": "pytorch",
                "replicas": 2,
                "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:test"}]}},
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)
        if self._wait_state("fz-canary", "Running", 60) != "Running":
            self.report.canary = f"not Running after 60 s (state {self._state('fz-canary')})"
            return
        for i in range(2):
            sim.make_pod_succeed(self.core, self.ns, f"fz-canary-a1-worker-{i}")
        self.report.canary = self._wait_state("fz-canary", "Succeeded", 60) or "no state"

    def _state(self, name: str) -> str | None:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return (job.get("status") or {}).get("state")

    def _wait_state(self, name: str, state: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (now := self._state(name)) == state:
                return now
            time.sleep(0.3)
        return self._state(name)


def run(
    api: client.ApiClient,
    namespace: str,
    count: int,
    seed: int,
    operator_log: Path,
    log: Callable[[str], None] = print,
) -> Report:
    """`count` manifests from `seed` into `namespace`; the operator (already running) logs to operator_log."""
    started = time.monotonic()
    fuzz = Fuzz(api, namespace, seed, log)
    log_start = operator_log.stat().st_size if operator_log.exists() else 0
    cases = list(Generator(seed).cases(count))
    fuzz.report.cases = len(cases)
    for first in range(0, len(cases), BATCH):
        fuzz.batch(cases[first : first + BATCH])
        r = fuzz.report
        done = min(first + BATCH, count)
        log(f"  {done}/{count}: {r.refused} refused, {r.accepted} accepted, {len(r.defects)} defects "
            f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    fuzz.canary()
    with operator_log.open(errors="replace") as f:
        f.seek(log_start)
        fuzz.report.log_defects = [line.rstrip()[:300] for line in f if LOG_DEFECTS.search(line)]
    fuzz.report.seconds = time.monotonic() - started
    return fuzz.report
