"""PyTorch DDP runtime: process-group set-up (`distributed`), a resumable sampler (`sampler`) and
a training-loop helper (`loop`). Importing this package imports torch.
"""

from phalanx_trainer.pytorch.distributed import DistContext, distributed, init_distributed, run_per_process
from phalanx_trainer.pytorch.loop import Progress, TrainConfig, TrainResult, train
from phalanx_trainer.pytorch.sampler import ResumableDistributedSampler

__all__ = [
    "DistContext",
    "Progress",
    "ResumableDistributedSampler",
    "TrainConfig",
    "TrainResult",
    "distributed",
    "init_distributed",
    "run_per_process",
    "train",
]
