"""Small builders of TrainingJob specs and views for the pure-core unit tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from phalanx.api.models import TrainingJobSpec, TrainingJobStatus
from phalanx.core.model import JobView, PodRef, PodView

NS = "team-a"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(framework: str = "pytorch", replicas: int = 2, **extra: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "framework": framework,
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "img", "command": ["python"]}]}},
            **extra,
        }
    )


def job(s: TrainingJobSpec, status: TrainingJobStatus | None = None, name: str = "j", **kw: Any) -> JobView:
    return JobView(
        name=name,
        namespace=NS,
        uid="uid",
        generation=1,
        created=T0,
        spec=s,
        spec_error=None,
        status=status or TrainingJobStatus(),
        **kw,
    )


def pod(
    index: int, attempt: int = 1, phase: str = "Running", replicas: int = 2, node: str = "n1", **kw: Any
) -> PodView:
    return PodView(
        name=f"j-a{attempt}-worker-{index}",
        index=index,
        attempt=attempt,
        phase=phase,
        ready=phase == "Running",
        replicas=replicas,
        node=node,
        **{"uid": f"uid-{index}-a{attempt}", **kw},
    )


def refs(*indices: int, attempt: int = 1) -> list[PodRef]:
    """What a plan deletes of the pods `pod(i, attempt)`: each by name and UID."""
    return [PodRef(f"j-a{attempt}-worker-{i}", f"uid-{i}-a{attempt}") for i in indices]
