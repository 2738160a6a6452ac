"""phalanx trainer runtime: what runs inside the training pods.

Importing this package (or `env`, `checkpoint`, `metrics`, `tpu`) must stay cheap: torch and
tensorflow are imported only by `phalanx_trainer.pytorch` and `phalanx_trainer.tensorflow`
modules that need them, so the contract can be validated (and a bad one reported) in well under a
second, and a PyTorch image never needs TensorFlow or the other way round.
"""

from phalanx_trainer.errors import ContractError, Preempted, RuntimeConfigError

__all__ = ["ContractError", "Preempted", "RuntimeConfigError"]
__version__ = "0.1.0"
