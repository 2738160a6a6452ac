"""2,000 seeded manifests, valid and invalid mixed, against the real apiserver with the operator running
as a process (its log captured): each refused naming a field or given a status (InvalidSpec where the
schema cannot see the fault), no job with ReconcileError, no traceback or failed reconcile in the log,
and a canary job still runs to Succeeded. `make chaos-fuzz` runs 10,000."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client

from tests.fuzz.generator import Generator
from tests.fuzz.run import names_field, run


def test_generator_is_seeded_and_mixes_valid_and_mutated() -> None:
    first = [c.manifest for c in Generator(7).cases(300)]
    assert first == [c.manifest for c in Generator(7).cases(300)]
    assert first != [c.manifest for c in Generator(8).cases(300)]
    mutated = sum(1 for c in Generator(7).cases(300) if c.mutations)
    assert 150 < mutated < 300
    assert len({m["metadata"]["name"] for m in first}) == 300  # every manifest a name of its own


def test_refusal_names_its_field() -> None:
    causes = {"details": {"causes": [{"field": "spec.replicas", "message": "x"}]}, "message": "m"}
    assert names_field(causes) == "spec.replicas"
    message = 'TrainingJob.phalanx.dev "x" is invalid: spec.template.spec.containers[0].name: Required value'
    assert names_field({"message": message}) == "spec.template.spec.containers[0].name"
    assert names_field({"message": "the API version in the data (phalanx.dev/v1) does not match"}) == "API version"
    assert names_field({"message": "the server could not handle it"}) is None


def test_fuzz_2000_manifests(
    api_client: client.ApiClient, namespace: str, operator_process: Callable[..., Any]
) -> None:
    operator = operator_process()
    report = run(api_client, namespace, count=2000, seed=16, operator_log=operator.log_path)
    print(report.summary())
    assert report.refused > 500 and report.accepted > 300, report.summary()  # both kinds were really made
    assert report.ok, report.summary()
