"""Reference TensorFlow trainer: MultiWorkerMirroredStrategy from TF_CONFIG, a small MLP classifier on
synthetic data (deterministic by seed), Keras `fit` (tf-keras) or a custom loop.

    python -m phalanx_trainer.examples.tensorflow_mwms --mode fit --steps 200 --batch-size 32

The chief prints `step 50/200 loss 0.123 samples/s 1234` lines and a final `done` line; `--out`
saves the final weights (chief, .npz). `--standalone` makes a one-worker TF_CONFIG for a local try.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from phalanx import contract
from phalanx_trainer.cli import run_main
from phalanx_trainer.env import read_job_env, read_tf_env
from phalanx_trainer.inplace import watch_attempt

PROG = "phalanx_trainer.examples.tensorflow_mwms"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--mode", choices=("fit", "custom"), default="fit", help="Keras fit (tf-keras) or a custom loop")
    p.add_argument("--steps", type=int, default=200, help="total steps of the job")
    p.add_argument("--batch-size", type=int, default=32, help="per worker (one replica per CPU worker)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (slower demos)")
    p.add_argument("--checkpoint-every-steps", type=int, default=None)
    p.add_argument(
        "--checkpoint-interval-seconds", type=float, default=None, help="default: PHALANX_CHECKPOINT_INTERVAL_SECONDS"
    )
    p.add_argument("--no-final-checkpoint", action="store_true")
    p.add_argument("--steps-per-epoch", type=int, default=50, help="fit mode: Keras epoch length")
    p.add_argument(
        "--control-every", type=int, default=10, help="fit mode: steps between the workers' SIGTERM/interval-save votes"
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="TF intra-op threads per worker")
    p.add_argument("--out", default=None, help="the chief saves the final weights here (numpy .npz)")
    p.add_argument("--standalone", action="store_true", help="no operator env needed: one local worker")
    return p.parse_args(argv)


def _standalone_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ[contract.TF_CONFIG] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    )


def make_dataset_fn(args: argparse.Namespace) -> Any:
    import numpy as np
    import tensorflow as tf

    teacher = tf.constant(
        np.random.default_rng(10_000 + args.seed).standard_normal((args.features, args.classes)), dtype=tf.float32
    )

    def dataset_fn(input_context: Any, first_step: int) -> Any:
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id

        def batch_for_step(step: Any) -> Any:
            # A stateless seed per (seed, step, worker): the stream is the same after a resume.
            seed = tf.stack([tf.constant(args.seed, tf.int64), step * pipelines + pipeline])
            x = tf.random.stateless_normal([args.batch_size, args.features], seed=seed)
            y = tf.argmax(tf.matmul(tf.tanh(x), teacher), axis=1)
            return x, y

        return tf.data.Dataset.range(first_step, args.steps).map(batch_for_step).prefetch(2)

    return dataset_fn


def build_model(args: argparse.Namespace) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)  # the same initial weights on every worker
    return tf.keras.Sequential(
        [
            tf.keras.Input(shape=(args.features,)),
            tf.keras.layers.Dense(args.hidden, activation="relu"),
            tf.keras.layers.Dense(args.hidden, activation="relu"),
            tf.keras.layers.Dense(args.classes),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.standalone:
        _standalone_env()
    # Validate the contract before importing TensorFlow (seconds): a bad env fails at once.
    watch_attempt(read_job_env())  # restartMode InPlace: a run of an old attempt leaves at once
    read_tf_env()
    from phalanx_trainer.tensorflow.keras_compat import use_legacy_keras

    use_legacy_keras(required=args.mode == "fit")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the pod log readable
    import numpy as np
    import tensorflow as tf

    from phalanx_trainer.tensorflow.config import TfTrainConfig
    from phalanx_trainer.tensorflow.context import init_tensorflow

    ctx = init_tensorflow(intra_op_threads=args.threads)
    config = TfTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_interval_seconds=args.checkpoint_interval_seconds,
        save_at_end=not args.no_final_checkpoint,
        log_every=args.log_every,
        step_sleep=args.step_sleep,
        control_every=args.control_every,
        steps_per_epoch=args.steps_per_epoch,
    )
    dataset_fn = make_dataset_fn(args)
    try:
        if args.mode == "fit":
            from phalanx_trainer.tensorflow.keras_fit import fit_resumable

            with ctx.strategy.scope():
                model = build_model(args)
                model.compile(
                    optimizer=tf.keras.optimizers.Adam(args.lr),
                    loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                )
            result = fit_resumable(ctx, model, dataset_fn, config, extra_meta={"mode": "fit"})
        else:
            from phalanx_trainer.tensorflow.custom_loop import train_custom_loop

            loss = tf.keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.NONE
            )
            model, result = train_custom_loop(
                ctx,
                lambda: build_model(args),
                lambda: tf.keras.optimizers.Adam(args.lr),
                loss,
                dataset_fn,
                config,
                extra_meta={"mode": "custom"},
            )
    finally:
        ctx.close()
    if ctx.is_chief:
        if args.out:
            tmp = f"{args.out}.tmp.npz"
            np.savez(tmp, *model.get_weights())
            os.replace(tmp, args.out)
        resumed = result.resumed_from if result.resumed_from is not None else -1
        rate = (result.step - max(resumed, 0)) * args.batch_size * ctx.num_workers / max(result.loop_s, 1e-9)
        ckpt = result.last_checkpoint_step if result.last_checkpoint_step is not None else -1
        print(
            f"done step {result.step}/{args.steps} loss {result.loss:.4f} world {ctx.num_workers} "
            f"resumed_from {resumed} checkpoint {ckpt} elapsed {result.elapsed_s:.1f}s samples/s {rate:.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    run_main(main, PROG)
    sys.exit(0)
