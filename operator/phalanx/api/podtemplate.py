"""The structural schema of spec.template: Kubernetes' PodTemplateSpec, generated into
podtemplatespec.json by phalanx.generate.podtemplate and shipped as package data."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("podtemplatespec.json")


@cache
def pod_template_document() -> dict[str, Any]:
    """The checked-in file: source, its sha256 and the schema."""
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded
