"""TensorFlow runtime: MultiWorkerMirroredStrategy from TF_CONFIG, chief-only checkpoints, a
custom training loop and a resumable Keras `fit`, plus the TPU strategy.

Importing this package does not import TensorFlow, but it does select Keras 2 (sets
TF_USE_LEGACY_KERAS=1 unless the user chose otherwise): TensorFlow picks its Keras once, at
import time, and Keras 3's fit does not work under MultiWorkerMirroredStrategy. Import the
submodules (`context`, `custom_loop`, `keras_fit`, `tpu_strategy`) afterwards; they import TF.
"""

from phalanx_trainer.tensorflow.keras_compat import default_to_legacy_keras

default_to_legacy_keras()
