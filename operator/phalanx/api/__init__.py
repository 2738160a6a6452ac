"""The TrainingJob API: pydantic models are the single source of the CRD, the chart's copy and the docs."""

from phalanx.api.frameworks import Framework, Strategy
from phalanx.api.models import GROUP, KIND, PLURAL, SHORT_NAME, VERSION, TrainingJobSpec, TrainingJobStatus

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "Framework",
    "Strategy",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
