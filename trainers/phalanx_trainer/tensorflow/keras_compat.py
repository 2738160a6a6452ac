"""Pick Keras 2 (tf-keras) before TensorFlow is imported, and say so when Keras 3 would be used.

TF >= 2.16 ships Keras 3 as tf.keras, and Keras 3's `model.fit` fails under
MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica:...) ... to a Tensor";
keras-team/keras#20585, tensorflow/tensorflow#72388). The legacy Keras 2 package `tf-keras`
(same version as TF) works; TF uses it for tf.keras when TF_USE_LEGACY_KERAS=1 is in the
environment at import time.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from phalanx_trainer.errors import RuntimeConfigError

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"
_TRUE = ("1", "true", "yes")
KERAS3_MWMS_PROBLEM = (
    "Keras 3 model.fit does not work under MultiWorkerMirroredStrategy (keras-team/keras#20585); "
    f"install tf-keras (same version as TensorFlow) and set {LEGACY_KERAS_ENV}=1 before TensorFlow is imported, "
    "or use the custom training loop (phalanx_trainer.tensorflow.custom_loop)"
)


def legacy_keras_requested(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(LEGACY_KERAS_ENV, "").strip().lower() in _TRUE


def default_to_legacy_keras() -> None:
    """Set TF_USE_LEGACY_KERAS=1 if TensorFlow is not imported yet and the user did not choose."""
    if LEGACY_KERAS_ENV not in os.environ and "tensorflow" not in sys.modules:
        os.environ[LEGACY_KERAS_ENV] = "1"


def use_legacy_keras(*, required: bool) -> bool:
    """Arrange for tf.keras to be tf-keras (Keras 2). Call before the first `import tensorflow`.

    Sets TF_USE_LEGACY_KERAS=1 unless the user set it to something else. Returns True when
    tf.keras will be Keras 2. With `required` (Keras fit under MWMS) a setup that would give
    Keras 3 raises RuntimeConfigError; otherwise it only warns on stderr.
    """
    problem: str | None = None
    default_to_legacy_keras()
    if "tensorflow" in sys.modules:
        legacy = keras_is_legacy()
        if not legacy:
            problem = "TensorFlow was imported before phalanx could select tf-keras; tf.keras is Keras 3"
    elif not legacy_keras_requested():
        legacy = False
        problem = f"{LEGACY_KERAS_ENV}={os.environ.get(LEGACY_KERAS_ENV)!r} selects Keras 3"
    elif importlib.util.find_spec("tf_keras") is None:
        legacy = False
        problem = "the tf-keras package is not installed, so tf.keras falls back to Keras 3"
    else:
        legacy = True
    if problem is not None:
        if required:
            raise RuntimeConfigError(f"{problem}. {KERAS3_MWMS_PROBLEM}")
        print(f"phalanx_trainer: warning: {problem}. {KERAS3_MWMS_PROBLEM}", file=sys.stderr, flush=True)
    return legacy


def keras_is_legacy() -> bool:
    """After TensorFlow is imported: is tf.keras the Keras 2 package (tf_keras)?"""
    import tensorflow as tf

    return str(tf.keras.Model.__module__).startswith("tf_keras")
