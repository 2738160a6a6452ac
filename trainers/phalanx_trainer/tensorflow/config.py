"""Settings shared by the TensorFlow custom loop and the Keras fit path (no TF import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TfTrainConfig:
    steps: int  # total steps of the job; a resumed run continues towards it
    batch_size: int  # per replica (one replica per CPU worker)
    seed: int = 0
    checkpoint_every_steps: int | None = None
    checkpoint_interval_seconds: float | None = None  # None: PHALANX_CHECKPOINT_INTERVAL_SECONDS
    save_at_end: bool = True
    log_every: int = 50
    step_sleep: float = 0.0
    # Steps between the workers' vote on "stop for SIGTERM / save for the interval". The custom
    # loop votes every step for free (piggybacked on the loss all-reduce); fit needs a separate
    # small collective, so it votes every `control_every` steps.
    control_every: int = 10
    steps_per_epoch: int = 100  # Keras fit only: its notion of an epoch
    print_progress: bool = True

    def __post_init__(self) -> None:
        if (
            self.steps < 0
            or self.batch_size < 1
            or self.log_every < 1
            or self.control_every < 1
            or self.steps_per_epoch < 1
        ):
            raise ValueError("steps >= 0 and batch_size, log_every, control_every, steps_per_epoch >= 1 are required")


@dataclass(frozen=True)
class TfTrainResult:
    step: int
    resumed_from: int | None
    loss: float
    elapsed_s: float  # the whole call
    loop_s: float  # first step of this run to the last
    last_checkpoint_step: int | None
