"""A custom MWMS training loop (strategy.run inside tf.function) with resume and preemption.

The preemption vote and the "interval checkpoint due" flag ride on the loss all-reduce every step
is doing anyway: each replica returns [loss, sigterm_seen, chief_says_save_due] and one SUM
reduce gives every worker the same answer, so all of them save and stop after the same step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from phalanx_trainer.errors import Preempted
from phalanx_trainer.tensorflow.config import TfTrainConfig, TfTrainResult
from phalanx_trainer.tensorflow.context import TfContext
from phalanx_trainer.tensorflow.saving import TfSaver

# (input context, first step) -> dataset of per-replica batches (x, y); element k feeds step first+k.
DatasetFn = Callable[[Any, int], Any]
# (labels, predictions) -> per-example losses (reduction NONE); averaged over the global batch here.
PerExampleLossFn = Callable[[Any, Any], Any]


def train_custom_loop(
    ctx: TfContext,
    build_model: Callable[[], Any],
    make_optimizer: Callable[[], Any],
    loss_fn: PerExampleLossFn,
    dataset_fn: DatasetFn,
    config: TfTrainConfig,
    *,
    extra_meta: Mapping[str, Any] | None = None,
) -> tuple[Any, TfTrainResult]:
    """Build model and optimizer under the strategy, resume, train to `config.steps`; return (model, result)."""
    started = time.perf_counter()
    strategy = ctx.strategy
    with strategy.scope():
        model = build_model()
        optimizer = make_optimizer()
    saver = TfSaver(ctx, config, {"model": model, "optimizer": optimizer}, extra_meta)
    step = saver.restore()
    global_batch = config.batch_size * ctx.num_replicas

    @tf.function  # type: ignore[untyped-decorator]
    def train_step(batch: Any, control: Any) -> Any:
        def replica_step(inputs: Any, control: Any) -> Any:
            x, y = inputs
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                loss = tf.nn.compute_average_loss(loss_fn(y, pred), global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return tf.concat([tf.reshape(tf.cast(loss, tf.float32), [1]), control], axis=0)

        out = strategy.run(replica_step, args=(batch, control))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)

    first = step
    iterator = iter(strategy.distribute_datasets_from_function(lambda ic: dataset_fn(ic, first)))
    metrics, preemption, schedule = ctx.metrics, ctx.preemption, saver.schedule
    log_t, log_step = time.perf_counter(), step
    t_prev = loop_start = time.perf_counter()
    loss = float("nan")
    while step < config.steps:
        control = tf.constant(
            [1.0 if preemption.requested else 0.0, 1.0 if ctx.is_chief and schedule.time_due() else 0.0]
        )
        out = train_step(next(iterator), control).numpy()
        step += 1
        loss = float(out[0])
        if config.step_sleep:
            time.sleep(config.step_sleep)
        now = time.perf_counter()
        metrics.observe_step(now - t_prev, config.batch_size * (ctx.num_replicas // ctx.num_workers))
        t_prev = now
        if step % config.log_every == 0 or step == config.steps:
            metrics.set_loss(loss)
            if ctx.is_chief and config.print_progress:
                rate = (step - log_step) * global_batch / max(now - log_t, 1e-9)
                print(f"step {step}/{config.steps} loss {loss:.4f} samples/s {rate:.0f}", flush=True)
                log_t, log_step = now, step
        if step >= config.steps:
            break
        if out[1] > 0:
            saver.save(step)
            raise Preempted(step, saved=saver.enabled)
        if schedule.step_due(step) or out[2] > 0:
            saver.save(step)
    if config.save_at_end:
        saver.save(step)
    return model, TfTrainResult(
        step=step,
        resumed_from=saver.resumed_from,
        loss=loss,
        elapsed_s=time.perf_counter() - started,
        loop_s=t_prev - loop_start,
        last_checkpoint_step=saver.last_saved,
    )
