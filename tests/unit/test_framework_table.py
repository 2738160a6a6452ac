"""The framework table (api/frameworks.py) is the one source: every strategy has exactly one adapter
(core/frameworks) of the framework the table gives it, and the CRD, the defaults and the metrics labels
say what the table says."""

from __future__ import annotations

from typing import Any

from phalanx.api import frameworks
from phalanx.api.crd import crd
from phalanx.api.frameworks import TABLE, Framework, Strategy
from phalanx.api.models import TrainingJobSpec
from phalanx.controller import metrics
from phalanx.core.frameworks import ADAPTERS

TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "x"}]}}


def test_every_strategy_has_one_adapter_of_its_frameworks() -> None:
    owner = {s: info.framework for info in TABLE.values() for s in info.strategies}
    assert set(owner) == set(Strategy) and set(TABLE) == set(Framework)
    assert set(ADAPTERS) == set(Strategy)
    for strategy, adapter in ADAPTERS.items():
        assert (adapter.strategy, adapter.framework) == (strategy, owner[strategy])


def test_the_default_strategy_is_the_tables_first() -> None:
    for framework, info in TABLE.items():
        spec = TrainingJobSpec.model_validate({"framework": framework, "replicas": 1, "template": TEMPLATE})
        assert spec.effective_strategy() is info.strategies[0]


def test_the_crd_holds_the_tables_rules_and_enums() -> None:
    # make verify checks the checked-in CRD is this one.
    spec: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"]: r["message"] for r in spec["x-kubernetes-validations"]}
    assert rules[frameworks.strategy_rule()] == frameworks.strategy_message()
    assert frameworks.preflight_rule() in rules
    props = spec["properties"]
    assert props["framework"]["enum"] == [f.value for f in Framework]
    assert props["strategy"]["enum"] == [s.value for s in Strategy]


def test_the_metrics_start_at_zero_for_every_framework() -> None:
    for framework in Framework:
        known = {s.labels["framework"] for m in metrics.JOB_STARTS.collect() for s in m.samples}
        assert framework.value in known
