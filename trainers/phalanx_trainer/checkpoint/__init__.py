"""Framework-agnostic checkpoint stores (`store`: a directory; `remote`: an fsspec URL) plus the
torch and TF adapters.

The adapters (`torch_io`, `tf_io`) import their framework; import them explicitly.
"""

from phalanx_trainer.checkpoint.store import (
    COMMIT_MARKER,
    Checkpoint,
    CheckpointStore,
    CheckpointWriter,
    Store,
    Writer,
    open_store,
)

__all__ = ["COMMIT_MARKER", "Checkpoint", "CheckpointStore", "CheckpointWriter", "Store", "Writer", "open_store"]
