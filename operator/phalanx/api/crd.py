"""Turns the pydantic models into a structural CustomResourceDefinition.

No maintained library does this, so this is the small converter: it inlines $refs, drops what
structural schemas forbid (titles, anyOf-with-null, boolean additionalProperties), keeps
descriptions, bounds, enums and CEL rules, and adds printer columns and subresources.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from phalanx.api.models import (
    CATEGORY,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    TrainingJobSpec,
    TrainingJobStatus,
)
from phalanx.api.podtemplate import pod_template_document

Schema = dict[str, Any]

# Keys that carry over unchanged from JSON Schema to OpenAPI v3 as the apiserver understands it.
_KEPT = {
    "type",
    "description",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "required",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


class SchemaError(ValueError):
    """The models use a JSON Schema construct that has no structural equivalent."""


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Convert one pydantic JSON Schema node (with its $defs) into a structural OpenAPI node."""
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # siblings of $ref (description, default) win
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string"):
            pass  # the int-or-string marker replaces the variants
        elif len(variants) == 1:
            node = {
                **structural(variants[0], defs),
                **{k: v for k, v in node.items() if k != "default"},
                **({"default": node["default"]} if node.get("default") is not None else {}),
            }
        else:
            raise SchemaError(f"union of {len(variants)} types has no structural form: {variants}")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if not isinstance(node.get(bound, True), bool):  # JSON Schema 2020 number -> OpenAPI 3.0 flag
            node[plain], node[bound] = node[bound], True

    out: Schema = {k: copy.deepcopy(v) for k, v in node.items() if k in _KEPT}
    if node.get("default") is not None and not isinstance(node["default"], dict):
        out["default"] = node["default"]
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {name: structural(sub, defs) for name, sub in node["properties"].items()}
        for name, sub in out["properties"].items():
            # An object whose fields all have defaults defaults to {} so the apiserver fills them in.
            if (
                sub.get("type") == "object"
                and "properties" in sub
                and not sub.get("required")
                and name not in node.get("required", [])
                and _defaults_to_object(node["properties"][name], defs)
            ):
                sub["default"] = {}
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = structural(additional, defs)
    if "items" in node:
        out["items"] = structural(node["items"], defs)
    return out


def _defaults_to_object(schema: Schema, defs: dict[str, Schema]) -> bool:
    """True when the model gives the field a default instance (rather than None)."""
    return isinstance(schema.get("default"), dict)


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


# What the models add to the generated PodTemplateSpec where both have the node: docs, bounds, rules.
_OVERLAID = ("description", "minItems", "maxItems", "minLength", "maxLength", "x-kubernetes-validations")


def _overlay(generated: Schema, ours: Schema) -> None:
    for key in _OVERLAID:
        if key in ours:
            generated[key] = copy.deepcopy(ours[key])
    generated["required"] = sorted(set(generated.get("required", [])) | set(ours.get("required", [])))
    if not generated["required"]:
        del generated["required"]
    for name, sub in ours.get("properties", {}).items():
        if name in generated.get("properties", {}):
            _overlay(generated["properties"][name], sub)
    if isinstance(ours.get("items"), dict) and isinstance(generated.get("items"), dict):
        _overlay(generated["items"], ours["items"])


def pod_template_schema(ours: Schema) -> Schema:
    """spec.template: Kubernetes' PodTemplateSpec (generated) with the models' descriptions, bounds and rules."""
    node: Schema = copy.deepcopy(pod_template_document()["schema"])
    _overlay(node, ours)
    return node


def printer_columns() -> list[Schema]:
    return [
        {"name": "State", "type": "string", "jsonPath": ".status.state", "description": "Job state"},
        {"name": "Framework", "type": "string", "jsonPath": ".spec.framework"},
        {
            "name": "Replicas",
            "type": "string",
            "jsonPath": ".status.readySummary",
            "description": "Pods ready / desired",
        },
        {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        {
            "name": "Efficiency",
            "type": "number",
            "format": "float",
            "jsonPath": ".status.throughput.scalingEfficiency",
            "description": "Weak-scaling efficiency",
        },
        {"name": "Samples/s", "type": "number", "jsonPath": ".status.throughput.samplesPerSecond", "priority": 1},
        {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.lastCheckpoint.step", "priority": 1},
        {
            "name": "Checkpointed",
            "type": "date",
            "jsonPath": ".status.lastCheckpoint.time",
            "priority": 1,
            "description": "Age of the newest checkpoint",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def status_schema() -> Schema:
    schema = model_schema(TrainingJobStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16
    return schema


def crd() -> dict[str, Any]:
    spec = model_schema(TrainingJobSpec)
    spec["properties"]["template"] = pod_template_schema(spec["properties"]["template"])
    root: Schema = {
        "type": "object",
        "description": "A distributed training job: PyTorch DDP or TensorFlow (MultiWorkerMirrored, TPU) "
        "pods run as one gang, restarted together from the last checkpoint.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": [CATEGORY, "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas.active",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }
