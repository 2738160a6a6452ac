"""One adapter per framework strategy behind one small interface (phalanx.adapters.base)."""

from __future__ import annotations

from phalanx.adapters.base import StrategyAdapter
from phalanx.adapters.pytorch import PyTorchDDP
from phalanx.adapters.tensorflow import TensorFlowMWMS
from phalanx.adapters.tpu import TensorFlowTPU
from phalanx.api.models import Strategy

ADAPTERS: dict[Strategy, StrategyAdapter] = {
    Strategy.DDP: PyTorchDDP(),
    Strategy.MULTI_WORKER_MIRRORED: TensorFlowMWMS(),
    Strategy.TPU: TensorFlowTPU(),
}


def adapter_for(strategy: Strategy) -> StrategyAdapter:
    return ADAPTERS[strategy]


__all__ = ["ADAPTERS", "StrategyAdapter", "adapter_for"]
