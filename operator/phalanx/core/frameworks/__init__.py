"""One adapter per framework strategy behind one small interface (phalanx.core.frameworks.base)."""

from __future__ import annotations

from phalanx.api.frameworks import Strategy
from phalanx.core.frameworks.base import StrategyAdapter
from phalanx.core.frameworks.pytorch import PyTorchDDP
from phalanx.core.frameworks.tensorflow import TensorFlowMWMS
from phalanx.core.frameworks.tpu import TensorFlowTPU

ADAPTERS: dict[Strategy, StrategyAdapter] = {
    Strategy.DDP: PyTorchDDP(),
    Strategy.MULTI_WORKER_MIRRORED: TensorFlowMWMS(),
    Strategy.TPU: TensorFlowTPU(),
}


def adapter_for(strategy: Strategy) -> StrategyAdapter:
    return ADAPTERS[strategy]


__all__ = ["ADAPTERS", "StrategyAdapter", "adapter_for"]
