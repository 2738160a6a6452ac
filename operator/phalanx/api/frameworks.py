"""The framework table: every framework, the strategies it takes and how its ranks are counted. The
API's enums, its defaults, the CEL rule that matches strategy to framework and the operator's metrics
labels all come from here; core/frameworks has one adapter per strategy (a test checks they agree).

Adding a framework: its members in the two enums, one `FrameworkInfo` here, and one adapter file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Framework(StrEnum):
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"


class Strategy(StrEnum):
    DDP = "ddp"
    MULTI_WORKER_MIRRORED = "multiWorkerMirrored"
    TPU = "tpu"


@dataclass(frozen=True)
class FrameworkInfo:
    framework: Framework
    strategies: tuple[Strategy, ...]  # the first is the default
    procs_per_gpu: bool  # procsPerPod auto: one process per GPU (else one per pod)
    preflight: bool  # the trainer runtime runs the preflight all-reduce


TABLE: dict[Framework, FrameworkInfo] = {
    f.framework: f
    for f in (
        FrameworkInfo(Framework.PYTORCH, (Strategy.DDP,), procs_per_gpu=True, preflight=True),
        FrameworkInfo(Framework.TENSORFLOW, (Strategy.MULTI_WORKER_MIRRORED, Strategy.TPU), False, False),
    )
}


def default_strategy(framework: Framework) -> Strategy:
    return TABLE[framework].strategies[0]


def _quoted(values: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def strategy_rule() -> str:
    """CEL: an explicit strategy is one its framework takes."""
    fits = "false"
    for info in reversed(TABLE.values()):
        fits = f"self.framework == '{info.framework}' ? self.strategy in {_quoted(info.strategies)} : {fits}"
    return f"!has(self.strategy) || ({fits})"


def strategy_message() -> str:
    takes = "; ".join(f"{i.framework} takes {' or '.join(i.strategies)}" for i in TABLE.values())
    return f"strategy does not fit framework: {takes}"


def preflight_frameworks() -> list[Framework]:
    return [i.framework for i in TABLE.values() if i.preflight]


def preflight_rule() -> str:
    """CEL: preflight only where the trainer runtime runs it."""
    return f"!has(self.preflight) || self.framework in {_quoted(preflight_frameworks())}"
