"""Checks a spec must pass that the CRD schema cannot express. Failing ones mark the job InvalidSpec."""

from __future__ import annotations

import re

from phalanx.api import frameworks
from phalanx.api.models import TrainingJobSpec
from phalanx.core import names
from phalanx.core.frameworks import adapter_for

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate(job_name: str, spec: TrainingJobSpec) -> list[str]:
    problems: list[str] = []
    limit = names.max_job_name_length(spec.replicas)
    if len(job_name) > limit:
        problems.append(
            f"metadata.name: '{job_name}' is {len(job_name)} characters; with {spec.replicas} replicas "
            f"rank hostnames <name>-worker-<i> must fit 63, so the name may have at most {limit}"
        )
    if not _DNS_1035.match(job_name):
        problems.append(
            f"metadata.name: '{job_name}' must start with a letter and contain only a-z, 0-9 and '-' "
            "(it names the headless Service)"
        )
    containers = spec.template.spec.containers
    if sum(1 for c in containers if c.name == names.TRAINER_CONTAINER) != 1:
        problems.append("spec.template.spec.containers: exactly one container must be named 'trainer'")
    if spec.preflight is not None and spec.framework not in frameworks.preflight_frameworks():
        takes = " or ".join(frameworks.preflight_frameworks())
        problems.append(f"spec.preflight: runs with the {takes} trainer runtime only")
    problems += adapter_for(spec.effective_strategy()).validate(spec)
    return problems
