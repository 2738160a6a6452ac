"""values.schema.json: generated from the values model, true to values.yaml, and refusing bad values
at `helm install`/`helm template` time with a message that names the value and what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from phalanx.generate.chart_values import ChartValues, values_schema_json
from tests.helm.release import CHART, template


def test_committed_schema_is_the_generated_one() -> None:
    assert (CHART / "values.schema.json").read_text() == values_schema_json(), "run `make generate`"


def test_values_yaml_holds_exactly_the_model_defaults() -> None:
    """values.yaml is hand-written for its comments; its values must be the model's defaults."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert ChartValues.model_validate(values) == ChartValues()
    assert values == ChartValues().model_dump(by_alias=True, mode="json")


def test_schema_forbids_unknown_keys_at_every_level() -> None:
    def objects(node: Any, path: str = "") -> list[str]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                found.append(path or "/")
            for key, child in node.items():
                found += objects(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                found += objects(child, f"{path}/{i}")
        return found

    assert objects(json.loads((CHART / "values.schema.json").read_text())) == []


BAD_VALUES = [
    pytest.param(
        {"image": {"pullPolicy": "Sometimes"}},
        "/image/pullPolicy",
        "value must be one of 'Always', 'IfNotPresent', 'Never'",
        id="pull-policy",
    ),
    pytest.param({"scope": "global"}, "/scope", "value must be one of 'cluster', 'namespace'", id="scope"),
    pytest.param(
        {"replicaCount": 3}, "", "additional properties 'replicaCount' not allowed", id="replicas-are-not-a-value"
    ),
    pytest.param(
        {"resources": {"limits": {"memory": "lots"}}},
        "/resources/limits/memory",
        "'lots' does not match pattern",
        id="quantity",
    ),
    pytest.param({"operator": {"workers": 0}}, "/operator/workers", "minimum: got 0, want 1", id="workers"),
    pytest.param(
        {"image": {"digest": "latest"}}, "/image/digest", "'latest' does not match pattern '^(sha256:", id="digest"
    ),
    pytest.param({"metrics": {"port": 80}}, "/metrics/port", "minimum: got 80, want 1,024", id="privileged-port"),
    pytest.param(
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "/metrics/serviceMonitor/interval",
        "'30 seconds' does not match pattern",
        id="interval",
    ),
    pytest.param(
        {"watchNamespace": "Team_A"}, "/watchNamespace", "'Team_A' does not match pattern", id="namespace-name"
    ),
    pytest.param({"rbac": {"create": "yes"}}, "/rbac/create", "got string, want boolean", id="boolean"),
]


@pytest.mark.parametrize(("values", "path", "message"), BAD_VALUES)
def test_helm_refuses_bad_values_with_a_readable_message(values: dict[str, Any], path: str, message: str) -> None:
    out = template(values, check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema(s)" in out.stderr
    assert f"- at '{path}': {message}" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 4, f"one line per problem, got:\n{out.stderr}"
    # The model refuses them too: the schema and the model agree.
    with pytest.raises(ValidationError):
        ChartValues.model_validate(values)
