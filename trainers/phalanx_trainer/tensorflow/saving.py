"""Checkpoint bookkeeping shared by the custom loop and Keras fit: restore, the save schedule,
metrics, and the collective save (every worker calls it at the same step)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from phalanx_trainer.checkpoint.store import Checkpoint
from phalanx_trainer.checkpoint.tf_io import TfCheckpointer
from phalanx_trainer.schedule import SaveSchedule
from phalanx_trainer.tensorflow.config import TfTrainConfig
from phalanx_trainer.tensorflow.context import TfContext


class TfSaver:
    def __init__(
        self, ctx: TfContext, config: TfTrainConfig, tracked: Mapping[str, Any], extra_meta: Mapping[str, Any] | None
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.checkpointer = TfCheckpointer(tf.train.Checkpoint(**tracked), ctx.store, is_chief=ctx.is_chief)
        interval = config.checkpoint_interval_seconds or ctx.job.checkpoint_interval_seconds
        self.schedule = SaveSchedule(every_steps=config.checkpoint_every_steps, interval_seconds=interval)
        self.extra_meta = dict(extra_meta or {})
        self.last_saved: int | None = None
        self.resumed_from: int | None = None

    def restore(self) -> int:
        """Restore the newest committed checkpoint on every worker; return the step to start at."""
        ckpt: Checkpoint | None = self.ctx.agree_on_resume()
        self.ctx.metrics.set_resumed_from(None if ckpt is None else ckpt.step)
        if ckpt is None:
            return 0
        self.checkpointer.restore(ckpt)
        self.ctx.metrics.set_last_checkpoint(ckpt.step, ckpt.created)
        self.resumed_from = self.last_saved = ckpt.step
        if self.ctx.is_chief and self.config.print_progress:
            print(
                f"resumed from step {ckpt.step} (attempt {self.ctx.job.attempt}, "
                f"workers {ckpt.meta.get('world_size')} -> {self.ctx.num_workers})",
                flush=True,
            )
        return ckpt.step

    @property
    def enabled(self) -> bool:
        return self.ctx.store is not None

    def save(self, step: int) -> None:
        """Collective: every worker calls it at the same step (only the chief's copy is kept)."""
        if not self.enabled or self.last_saved == step:
            return
        t0 = time.perf_counter()
        meta = {
            "framework": "tensorflow",
            "progress": {"step": step},
            "world_size": self.ctx.num_workers,
            "replicas": self.ctx.num_replicas,
            "batch_size": self.config.batch_size,
            "seed": self.config.seed,
            "attempt": self.ctx.job.attempt,
            **self.extra_meta,
        }
        ckpt = self.checkpointer.save(step, meta)
        # Every worker took part in the save, so every pod can report it.
        self.ctx.metrics.observe_checkpoint(step, time.perf_counter() - t0, ckpt.created if ckpt is not None else None)
        self.schedule.mark_saved()
        self.last_saved = step
