"""spec.template is Kubernetes' own PodTemplateSpec: generated from the upstream OpenAPI v3 document of
the release in dev/versions.env, shipped as package data, and laid into the CRD with our rules."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from phalanx.api.crd import crd
from phalanx.api.podtemplate import SCHEMA_FILE, pod_template_document
from phalanx.generate import podtemplate as gen

REPO = Path(__file__).resolve().parents[2]


def template() -> dict[str, Any]:
    node: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return node["properties"]["template"]


def test_the_checked_in_schema_is_of_the_pinned_kubernetes_release() -> None:
    assert pod_template_document()["source"].startswith(f"k8s.io/kubernetes@{gen._kubernetes_version()} ")


def test_the_crd_template_is_the_full_pod_spec_with_our_rule_and_bounds() -> None:
    t = template()
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(t)  # nothing passes unchecked
    spec = t["properties"]["spec"]["properties"]
    assert {"containers", "initContainers", "volumes", "tolerations", "affinity"} <= spec.keys()
    assert "ephemeralContainers" not in spec
    assert spec["containers"]["maxItems"] == 32 and spec["containers"]["items"]["properties"]["name"]["maxLength"] == 63
    assert t["x-kubernetes-validations"][0]["rule"] == "self.spec.containers.exists(c, c.name == 'trainer')"
    assert set(t["properties"]["metadata"]["properties"]) == {"labels", "annotations"}
    assert spec["tolerations"]["type"] == "array"
    env = spec["containers"]["items"]["properties"]["env"]["items"]
    assert env["required"] == ["name"]
    limits = spec["containers"]["items"]["properties"]["resources"]["properties"]["limits"]["additionalProperties"]
    assert limits["x-kubernetes-int-or-string"] and limits["pattern"] == gen.QUANTITY_PATTERN


def test_the_crd_stays_far_below_the_size_limits() -> None:
    # kubectl's client-side apply keeps a copy in an annotation (256 KiB of annotations at most);
    # etcd's object limit is 1.5 MiB.
    assert len(json.dumps(crd(), separators=(",", ":"))) < 128 * 1024


def test_conversion_of_the_openapi_constructs() -> None:
    schemas = {
        "Q": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
        "Port": {
            "type": "object",
            "description": "dropped",
            "required": ["port"],
            "properties": {
                "port": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}]},
                "size": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity"},
                "tags": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set"},
            },
        },
    }
    assert gen.convert({"$ref": "#/components/schemas/Port"}, schemas) == {
        "type": "object",
        "required": ["port"],
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "size": {"x-kubernetes-int-or-string": True, "pattern": gen.QUANTITY_PATTERN},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    loop = {"A": {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A"}}}}
    with pytest.raises(ValueError, match="recursive"):
        gen.convert({"$ref": "#/components/schemas/A"}, loop)


def test_regenerating_from_the_upstream_document_gives_the_checked_in_file() -> None:
    version = gen._kubernetes_version()
    document = Path.home() / "go/pkg/mod" / f"k8s.io/kubernetes@{version}/api/openapi-spec/v3/api__v1_openapi.json"
    if not document.is_file():
        pytest.skip(f"{document} not fetched (make binaries fetches it)")
    assert gen.generate(document, version) == json.loads(SCHEMA_FILE.read_text())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_schema_file_is_in_the_built_package(tmp_path: Path) -> None:
    from setuptools import build_meta

    src = tmp_path / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    for tree in ("operator", "trainers"):
        shutil.copytree(REPO / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "dist"
    out.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(src)
        wheel = build_meta.build_wheel(str(out))
    assert "phalanx/api/podtemplatespec.json" in zipfile.ZipFile(out / wheel).namelist()
