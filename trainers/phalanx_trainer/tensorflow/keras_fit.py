"""Resumable Keras `fit` under MultiWorkerMirroredStrategy (BackupAndRestore-style, on our store).

Requires tf.keras to be Keras 2 (tf-keras, TF_USE_LEGACY_KERAS=1): Keras 3's fit fails under MWMS.
A resume at step S restores model and optimizer, then runs `fit` in at most two phases so the
steps and the data are the uninterrupted run's: the rest of the interrupted epoch (S is usually
mid-epoch), then the remaining epochs. Data comes from `dataset_fn(input_context, first_step)`,
a stream in which element k feeds step first_step + k, so no batch is replayed or skipped.

The workers agree on "stop for SIGTERM" and "the interval checkpoint is due" with a small eager
all-reduce every `config.control_every` steps (fit gives no cheaper hook); step-count checkpoints
need no agreement.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from phalanx_trainer.errors import Preempted, RuntimeConfigError
from phalanx_trainer.tensorflow.config import TfTrainConfig, TfTrainResult
from phalanx_trainer.tensorflow.context import TfContext
from phalanx_trainer.tensorflow.custom_loop import DatasetFn
from phalanx_trainer.tensorflow.keras_compat import KERAS3_MWMS_PROBLEM, keras_is_legacy
from phalanx_trainer.tensorflow.saving import TfSaver


class PhalanxFitCallback(tf.keras.callbacks.Callback):  # type: ignore[misc]
    """Counts global steps, feeds metrics and progress lines, saves and stops as agreed."""

    # Keep logs as tensors: converting them to numpy every batch would force a sync per step.
    _supports_tf_logs = True

    def __init__(self, ctx: TfContext, saver: TfSaver, config: TfTrainConfig, start_step: int) -> None:
        super().__init__()
        self.ctx = ctx
        self.saver = saver
        self.config = config
        self.step = start_step
        self.preempted = False
        self.loss = float("nan")
        self._t_prev = self.loop_start = time.perf_counter()
        self._log_t, self._log_step = self._t_prev, start_step
        self._local_batch = config.batch_size * (ctx.num_replicas // ctx.num_workers)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        cfg, ctx = self.config, self.ctx
        self.step += 1
        step = self.step
        if cfg.step_sleep:
            time.sleep(cfg.step_sleep)
        now = time.perf_counter()
        ctx.metrics.observe_step(now - self._t_prev, self._local_batch)
        self._t_prev = now
        if (step % cfg.log_every == 0 or step == cfg.steps) and logs and "loss" in logs:
            self.loss = float(logs["loss"])  # fit's running mean over the epoch so far
            ctx.metrics.set_loss(self.loss)
            if ctx.is_chief and cfg.print_progress:
                rate = (step - self._log_step) * self._local_batch * ctx.num_workers / max(now - self._log_t, 1e-9)
                print(f"step {step}/{cfg.steps} loss {self.loss:.4f} samples/s {rate:.0f}", flush=True)
                self._log_t, self._log_step = now, step
        if step >= cfg.steps:
            self.model.stop_training = True
            return
        stop = time_due = False
        if step % cfg.control_every == 0:
            votes = ctx.all_sum(
                [
                    1.0 if ctx.preemption.requested else 0.0,
                    1.0 if ctx.is_chief and self.saver.schedule.time_due() else 0.0,
                ]
            )
            stop, time_due = votes[0] > 0, votes[1] > 0
        if stop:
            self.saver.save(step)
            self.preempted = True
            self.model.stop_training = True
        elif self.saver.schedule.step_due(step) or time_due:
            self.saver.save(step)


def fit_resumable(
    ctx: TfContext,
    model: Any,
    dataset_fn: DatasetFn,
    config: TfTrainConfig,
    *,
    callbacks: Sequence[Any] = (),
    extra_meta: Mapping[str, Any] | None = None,
    verbose: int = 0,
) -> TfTrainResult:
    """Train a compiled Keras model (built and compiled under `ctx.strategy.scope()`) to `config.steps`."""
    if ctx.num_workers > 1 and not keras_is_legacy():
        raise RuntimeConfigError(KERAS3_MWMS_PROBLEM)
    started = time.perf_counter()
    saver = TfSaver(ctx, config, {"model": model, "optimizer": model.optimizer}, extra_meta)
    step = saver.restore()
    cb = PhalanxFitCallback(ctx, saver, config, step)
    spe = config.steps_per_epoch
    while step < config.steps and not cb.preempted:
        epoch, in_epoch = divmod(step, spe)
        first = step
        dataset = ctx.strategy.distribute_datasets_from_function(lambda ic, first=first: dataset_fn(ic, first))
        if in_epoch:  # finish the interrupted epoch
            model.fit(
                dataset,
                initial_epoch=epoch,
                epochs=epoch + 1,
                steps_per_epoch=spe - in_epoch,
                callbacks=[cb, *callbacks],
                verbose=verbose,
            )
        else:  # whole epochs; the callback stops fit at config.steps
            epochs = -(-config.steps // spe)
            model.fit(
                dataset,
                initial_epoch=epoch,
                epochs=epochs,
                steps_per_epoch=spe,
                callbacks=[cb, *callbacks],
                verbose=verbose,
            )
        if cb.step == step:
            raise RuntimeError(f"fit made no progress from step {step} (did the dataset run out?)")
        step = cb.step
    if cb.preempted:
        raise Preempted(step, saved=saver.enabled)
    if config.save_at_end:
        saver.save(step)
    return TfTrainResult(
        step=step,
        resumed_from=saver.resumed_from,
        loss=cb.loss,
        elapsed_s=time.perf_counter() - started,
        loop_s=cb._t_prev - cb.loop_start,
        last_checkpoint_step=saver.last_saved,
    )
