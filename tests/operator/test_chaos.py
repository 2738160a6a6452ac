"""Chaos: jobs of mixed outcomes while operators are SIGKILLed at random, then the end state is checked.

Two operators share the Lease (a leader and a warm standby); every kill is replaced at once, as a
Deployment would. The jobs succeed, fail retryably until backoffLimit, fail non-retryably, or are
deleted while they run. At the end (tests/operator/churn.py): no rank's pod created twice within one
attempt, no attempt beyond (or short of) what the failures dictate and none skipped, every job in the
state its pods dictate, no orphan pod and no pod of an old attempt left.

Size and seed: PHALANX_CHAOS_JOBS (100), PHALANX_CHAOS_KILLS (20), PHALANX_CHAOS_SEED (16).
`make chaos` runs 200 jobs and 50 kills and writes its figures to PHALANX_CHAOS_REPORT (a JSON file).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from tests.operator.churn import KINDS, Fleet, PodLedger, manifest, verify, wait_settled
from tests.plugins.operator import JobClient, OperatorProcess

pytestmark = pytest.mark.cluster

JOBS = int(os.environ.get("PHALANX_CHAOS_JOBS", "100"))
KILLS = int(os.environ.get("PHALANX_CHAOS_KILLS", "20"))
SEED = int(os.environ.get("PHALANX_CHAOS_SEED", "16"))
# Short leases so that a killed leader is replaced within ~2 s and 20 kills fit in a minute.
LEASE = {
    "PHALANX_LEASE_DURATION_SECONDS": "2",
    "PHALANX_LEASE_RENEW_DEADLINE_SECONDS": "1.5",
    "PHALANX_LEASE_RETRY_PERIOD_SECONDS": "0.25",
}
MIX = [("succeed", 35), ("retry", 25), ("fatal", 20), ("deleted", 20)]


def test_chaos_random_sigkills_leave_every_job_right(
    operator_process: Callable[..., OperatorProcess], api_client: client.ApiClient, jobs: JobClient, namespace: str
) -> None:
    rng = random.Random(SEED)
    kinds = [k for k, weight in MIX for _ in range(weight)]
    plan = {f"c{i:03d}": rng.choice(kinds) for i in range(JOBS)}
    replicas = {name: rng.randint(1, 3) for name in plan}
    fleet = Fleet(operator_process, client.CoordinationV1Api(api_client), **LEASE)
    fleet.start(2)
    killing_done = threading.Event()
    last_kill = [0.0]

    def killer() -> None:
        try:
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.5, 2.5))
                fleet.kill_one(rng)
                last_kill[0] = time.monotonic()
        finally:
            killing_done.set()

    started = time.monotonic()
    with PodLedger(jobs.core, namespace) as ledger:
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        to_delete = [n for n, k in plan.items() if k == "deleted"]
        for i, name in enumerate(plan):
            jobs.create(manifest(name, plan[name], replicas[name]))
            if i % 10 == 9:
                time.sleep(rng.uniform(0.5, 1.5))
                # Delete the "deleted" jobs that have pods by now, mid-run (the others at the end).
                for victim in [v for v in to_delete if jobs.pods(v)]:
                    jobs.delete(victim)
                    to_delete.remove(victim)
        for victim in to_delete:  # the rest, whether or not their pods exist yet
            jobs.delete(victim)
        thread.join(KILLS * 3 + 60)
        assert killing_done.is_set() and fleet.kills == KILLS
        wait_settled(jobs, plan, timeout=300 + JOBS)
        settled = time.monotonic()
        outcome = verify(jobs, ledger, plan, replicas)
    figures = {
        "jobs": JOBS,
        "kills": fleet.kills,
        "seed": SEED,
        "kinds": {k: sum(1 for v in plan.values() if v == k) for k in KINDS if k != "scaled"},
        "pods_created": len(ledger.created),
        "wall_s": round(settled - started, 1),
        "settled_after_last_kill_s": round(settled - last_kill[0], 1),
        "problems": len(outcome.problems),
    }
    print(f"chaos: {json.dumps(figures)}")
    report = os.environ.get("PHALANX_CHAOS_REPORT")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps({**figures, "problem_list": outcome.problems}, indent=2) + "\n")
    assert not outcome.problems, "\n".join(outcome.problems)
