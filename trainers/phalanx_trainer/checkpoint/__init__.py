"""Framework-agnostic checkpoint store (`store`) plus the torch and TF adapters.

The adapters (`torch_io`, `tf_io`) import their framework; import them explicitly.
"""

from phalanx_trainer.checkpoint.store import COMMIT_MARKER, Checkpoint, CheckpointStore, CheckpointWriter

__all__ = ["COMMIT_MARKER", "Checkpoint", "CheckpointStore", "CheckpointWriter"]
