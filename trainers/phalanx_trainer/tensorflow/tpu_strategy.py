"""TPUStrategy for a GKE TPU VM slice, from `phalanx_trainer.tpu.resolve_tpu` (not runnable here).

Untested on real TPUs in this repository: the CI machines have none. The resolution logic it
relies on is a pure function with unit tests; this module only feeds it to TensorFlow.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from phalanx_trainer.tpu import TpuResolution, resolve_tpu


def make_tpu_strategy(resolution: TpuResolution | None = None) -> Any:
    resolution = resolve_tpu() if resolution is None else resolution
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=resolution.tpu)
    if resolution.multi_host:
        # Which host this process is; the resolver's default is task 0.
        resolver.task_type = "worker"
        resolver.task_id = resolution.worker_id
    # Google's TPU VM recipe connects even on a single host ('local' yields an empty cluster).
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
