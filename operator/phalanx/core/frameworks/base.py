"""The interface every framework strategy implements. Adding JAX: this file's Protocol in a new file,
registered in core/frameworks/__init__.py, and its entry in the framework table (api/frameworks.py)."""

from __future__ import annotations

from typing import Any, Protocol

from phalanx.api.frameworks import Framework, Strategy
from phalanx.api.models import TrainingJobSpec
from phalanx.core.gang import Gang

EnvVar = dict[str, Any]
Port = dict[str, Any]


class StrategyAdapter(Protocol):
    framework: Framework
    strategy: Strategy

    def validate(self, spec: TrainingJobSpec) -> list[str]:
        """Problems the schema cannot catch, as messages naming the field. Must be pure."""
        ...

    def env(self, gang: Gang, index: int) -> list[EnvVar]:
        """The framework's env for the pod at `index`. Must be deterministic."""
        ...

    def ports(self) -> list[Port]:
        """Container ports the ranks talk on (also published by the headless Service)."""
        ...

    def pod_overrides(self, gang: Gang) -> dict[str, Any]:
        """Pod spec fields the strategy needs (node selectors, resources); merged by the builder."""
        ...


def env_var(name: str, value: object) -> EnvVar:
    return {"name": name, "value": str(value)}
