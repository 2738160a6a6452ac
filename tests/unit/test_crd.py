"""The pydantic -> CRD converter: a structural schema the apiserver accepts, with docs and CEL rules."""

from __future__ import annotations

from typing import Any

from phalanx.api.crd import crd, structural


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.get("properties", {}).items():
            out += walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            out += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


def schema() -> dict[str, Any]:
    s: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return s


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"} & node.keys(), path
        assert node.get("additionalProperties") is not False, path
        preserved = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or preserved, f"{path} has no type"
        assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(node["exclusiveMinimum"], bool)


def test_every_spec_field_is_documented() -> None:
    for path, node in walk(schema()["properties"]["spec"], "spec"):
        if path.count(".") and not path.startswith("spec.template.") and not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description (kubectl explain would be empty)"


def test_nested_defaults_apply_and_int_or_string() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["runPolicy"]["default"] == {} and spec["runPolicy"]["properties"]["backoffLimit"]["default"] == 3
    assert spec["procsPerPod"] == {
        "description": spec["procsPerPod"]["description"],
        "x-kubernetes-int-or-string": True,
        "default": "auto",
    }


def test_optional_fields_lose_null_and_keep_bounds() -> None:
    raw = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None, "description": "d"}
    assert structural(raw, {}) == {"type": "integer", "minimum": 1, "description": "d"}
    gt = {"type": "number", "exclusiveMinimum": 0}
    assert structural(gt, {}) == {"type": "number", "minimum": 0, "exclusiveMinimum": True}


def test_crd_names_subresources_and_columns() -> None:
    c = crd()["spec"]
    assert c["names"]["shortNames"] == ["tj"] and "phalanx" in c["names"]["categories"]
    v = c["versions"][0]
    assert v["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas.active",
        "labelSelectorPath": ".status.selector",
    }
    names = [col["name"] for col in v["additionalPrinterColumns"]]
    for wanted in ("State", "Framework", "Replicas", "GPUs", "Restarts", "Efficiency", "Age"):
        assert wanted in names
    rules = [r["rule"] for _, n in walk(schema()) for r in n.get("x-kubernetes-validations", [])]
    assert len(rules) >= 8
