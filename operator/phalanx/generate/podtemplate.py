"""`python -m phalanx.generate.podtemplate [OPENAPI_JSON]`: refresh operator/phalanx/api/podtemplatespec.json.

The CRD validates `spec.template` against the real PodTemplateSpec of the Kubernetes release the
local control plane runs (dev/versions.env), generated the way JobSet and Kubeflow generate theirs:
from Kubernetes' own OpenAPI v3 document (api/openapi-spec/v3/api__v1_openapi.json of
k8s.io/kubernetes, the same document the apiserver serves at /openapi/v3/api/v1), every $ref
inlined into one structural schema. `make generate` then builds the CRD from the checked-in result,
so the CRD never needs the upstream file; only a Kubernetes upgrade reruns this.

What is changed on the way, and why:
- descriptions and defaults are dropped: the CRD must stay small (docs/design.md gives its size),
  and the apiserver defaults the pods themselves when the operator creates them;
- list-type/map-type/patch markers are dropped: list-map keys would have to be required or
  defaulted in a CRD, and they only steer merges, not validation;
- Quantity and IntOrString become x-kubernetes-int-or-string (Quantity with its pattern);
- metadata keeps labels and annotations, the only parts the operator copies to the pods;
- ephemeralContainers is left out: the apiserver refuses them on pod create.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from phalanx.api.podtemplate import SCHEMA_FILE

REPO = Path(__file__).resolve().parents[3]
ROOT = "io.k8s.api.core.v1.PodTemplateSpec"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# The pattern apimachinery's Quantity parser accepts (as controller-gen writes it into CRDs).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
LEFT_OUT = {"io.k8s.api.core.v1.PodSpec": {"ephemeralContainers"}}
KEPT = ("type", "format", "required", "minimum", "maximum", "minLength", "maxLength", "pattern", "enum")

Schema = dict[str, Any]


def _ref_name(node: Schema) -> str | None:
    ref = node.get("$ref")
    if ref is None and len(node.get("allOf") or []) == 1:
        ref = node["allOf"][0].get("$ref")
    return str(ref).rsplit("/", 1)[-1] if ref else None


def convert(node: Schema, schemas: dict[str, Schema], seen: tuple[str, ...] = ()) -> Schema:
    """One OpenAPI v3 node of the Kubernetes document as a structural CRD schema node."""
    name = _ref_name(node)
    if name is not None:
        if name == QUANTITY:
            return {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
        if name == INT_OR_STRING:
            return {"x-kubernetes-int-or-string": True}
        if name == OBJECT_META:
            text = {"type": "object", "additionalProperties": {"type": "string"}}
            return {"type": "object", "properties": {"labels": text, "annotations": text}}
        if name in seen:
            raise ValueError(f"recursive schema {' -> '.join((*seen, name))} has no structural form")
        inlined = convert(schemas[name], schemas, (*seen, name))
        for field in LEFT_OUT.get(name, ()):
            inlined["properties"].pop(field, None)
        return inlined
    out: Schema = {k: node[k] for k in KEPT if k in node}
    if out.get("format") == "int-or-string":
        return {"x-kubernetes-int-or-string": True}
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: convert(v, schemas, seen) for k, v in sorted(node["properties"].items())}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = convert(node["additionalProperties"], schemas, seen)
    if "items" in node:
        out["items"] = convert(node["items"], schemas, seen)
    if "type" not in out:
        raise ValueError(f"schema node without a type: {json.dumps(node)[:200]}")
    return out


def generate(document: Path, kubernetes_version: str) -> dict[str, Any]:
    raw = document.read_bytes()
    schemas = json.loads(raw)["components"]["schemas"]
    return {
        "source": f"k8s.io/kubernetes@{kubernetes_version} api/openapi-spec/v3/api__v1_openapi.json",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "generator": "python -m phalanx.generate.podtemplate",
        "schema": convert({"$ref": f"#/components/schemas/{ROOT}"}, schemas),
    }


def _kubernetes_version() -> str:
    for line in (REPO / "dev" / "versions.env").read_text().splitlines():
        if line.startswith("K8S_VERSION="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("dev/versions.env has no K8S_VERSION")


def main() -> int:
    version = _kubernetes_version()
    modcache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go" / "pkg" / "mod")
    default = modcache / f"k8s.io/kubernetes@{version}/api/openapi-spec/v3/api__v1_openapi.json"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("document", type=Path, nargs="?", default=default, help=f"default: {default}")
    args = parser.parse_args()
    if not args.document.is_file():
        print(f"error: {args.document} not found; `make binaries` fetches k8s.io/kubernetes {version}", file=sys.stderr)
        return 1
    SCHEMA_FILE.write_text(json.dumps(generate(args.document, version), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
