"""MultiWorkerMirroredStrategy from TF_CONFIG, plus metrics, SIGTERM watching and the checkpoint
store, bundled for the training loops.

Import `phalanx_trainer.tensorflow.keras_compat` and call `use_legacy_keras()` before this module
(it imports TensorFlow).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from phalanx import contract
from phalanx_trainer.checkpoint.store import Checkpoint, Store, open_store
from phalanx_trainer.env import JobEnv, TfEnv, read_job_env, read_tf_env
from phalanx_trainer.errors import ContractError, RuntimeConfigError
from phalanx_trainer.inplace import watch_attempt
from phalanx_trainer.metrics import TrainerMetrics
from phalanx_trainer.preemption import PreemptionWatcher
from phalanx_trainer.tensorflow.keras_compat import KERAS3_MWMS_PROBLEM, keras_is_legacy

CONTROL_WIDTH = 2  # numbers per control all-reduce (fixed shape: one traced function serves all)


@dataclass
class TfContext:
    strategy: Any  # tf.distribute.MultiWorkerMirroredStrategy
    tf_env: TfEnv
    job: JobEnv
    metrics: TrainerMetrics
    preemption: PreemptionWatcher
    store: Store | None
    _sum_fn: Any = field(default=None, repr=False)

    @property
    def is_chief(self) -> bool:
        return self.tf_env.is_chief

    @property
    def worker_rank(self) -> int:
        return self.tf_env.worker_rank

    @property
    def num_workers(self) -> int:
        return self.tf_env.num_workers

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Sum up to CONTROL_WIDTH numbers over all workers (a collective every worker must call)."""
        if len(values) > CONTROL_WIDTH:
            raise ValueError(f"at most {CONTROL_WIDTH} values")
        padded = [*values, *([0.0] * (CONTROL_WIDTH - len(values)))]
        if self.num_workers == 1:
            return list(padded[: len(values)])
        if self._sum_fn is None:
            self._sum_fn = self._make_sum_fn()
        total = self._sum_fn(tf.constant(padded, dtype=tf.float64)).numpy()
        return [float(v) for v in total[: len(values)]]

    def _make_sum_fn(self) -> Any:
        strategy, local_replicas = self.strategy, self._local_replicas

        # A traced function, not eager strategy.run: eager collectives are slow and log a warning.
        @tf.function(input_signature=[tf.TensorSpec([CONTROL_WIDTH], tf.float64)])  # type: ignore[untyped-decorator]
        def sum_over_workers(local: Any) -> Any:
            def replica_fn(v: Any) -> Any:
                # Each worker contributes once, whatever its number of local replicas.
                first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group % local_replicas, 0)
                return tf.where(first, v, tf.zeros_like(v))

            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_fn, args=(local,)), axis=None)

        return sum_over_workers

    @property
    def _local_replicas(self) -> int:
        return max(1, self.num_replicas // self.num_workers)

    def agree_on_resume(self) -> Checkpoint | None:
        """The chief's newest committed checkpoint, checked visible on every worker (collective)."""
        if self.store is not None and self.is_chief:
            self.store.cleanup_incomplete()
        local = self.store.latest() if self.store is not None and self.is_chief else None
        # Encode "none" as 0 so non-chiefs can contribute 0 to the sum.
        step = int(self.all_sum([local.step + 1 if local is not None else 0])[0]) - 1
        if step < 0:
            return None
        ckpt = self.store.get(step) if self.store is not None else None
        missing = int(self.all_sum([0 if ckpt is not None else 1])[0])
        if missing or ckpt is None:
            raise RuntimeConfigError(
                f"{missing} worker(s) cannot see the chief's checkpoint step {step} in {contract.CHECKPOINT_DIR}: "
                "TF workers restore from the chief's checkpoint, so the directory must be shared (ReadWriteMany)"
            )
        return ckpt

    def close(self) -> None:
        self.preemption.uninstall()


def init_tensorflow(
    tf_env: TfEnv | None = None,
    job: JobEnv | None = None,
    *,
    intra_op_threads: int | None = None,
    serve_metrics: bool = True,
    metrics_addr: str = "0.0.0.0",
) -> TfContext:
    """Create the MWMS strategy from TF_CONFIG (ring all-reduce on CPU, NCCL on GPUs)."""
    job = read_job_env() if job is None else job
    tf_env = read_tf_env() if tf_env is None else tf_env
    if tf_env.is_evaluator:
        raise ContractError(
            contract.TF_CONFIG, "task.type 'evaluator' does not train; the runtime runs chief/worker tasks"
        )
    if intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, intra_op_threads))
    if tf_env.num_workers > 1 and not keras_is_legacy():
        print(f"phalanx_trainer: warning: tf.keras is Keras 3. {KERAS3_MWMS_PROBLEM}", file=sys.stderr, flush=True)
    watch_attempt(job)  # restartMode InPlace: leave when the gang moves to a new attempt
    metrics = TrainerMetrics(enabled=True, local_world_size=1)
    metrics.set_identity(world_size=tf_env.num_workers, rank=tf_env.worker_rank, attempt=job.attempt, procs_per_pod=1)
    if serve_metrics and job.metrics_port is not None:
        metrics.serve(job.metrics_port, addr=metrics_addr)
    gpus = tf.config.list_physical_devices("GPU")
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if gpus
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    # TFConfigClusterResolver reads TF_CONFIG itself; read_tf_env() has already validated it.
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation),
    )
    # After the strategy: TF's coordination service installs its own SIGTERM notifier when the
    # cluster starts, which would otherwise swallow the signal.
    preemption = PreemptionWatcher().install()
    return TfContext(
        strategy=strategy,
        tf_env=tf_env,
        job=job,
        metrics=metrics,
        preemption=preemption,
        store=open_store(job),
    )
