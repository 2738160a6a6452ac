"""TensorFlow adapter for the checkpoint store.

Under MultiWorkerMirroredStrategy every worker must call save (writing may run collectives, e.g.
to read SyncOnRead variables); only the chief's copy is the checkpoint. The other workers write
to a private scratch directory that is deleted right away. Every worker restores from the chief's
committed checkpoint, so the checkpoint directory must be shared (ReadWriteMany), as for TF's own
BackupAndRestore.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phalanx_trainer.checkpoint.store import Checkpoint, Store

CKPT_PREFIX = "ckpt"  # TF writes ckpt.index and ckpt.data-00000-of-00001 under the step directory


class TfCheckpointer:
    def __init__(
        self, checkpoint: Any, store: Store | None, *, is_chief: bool, scratch_root: Path | None = None
    ) -> None:
        self.checkpoint = checkpoint  # a tf.train.Checkpoint
        self.store = store
        self.is_chief = is_chief
        self.scratch_root = scratch_root

    def save(self, step: int, meta: Mapping[str, Any]) -> Checkpoint | None:
        """Collective: call on every worker at the same step. Returns the checkpoint on the chief."""
        if self.store is not None and self.is_chief:
            with self.store.begin(step) as writer:
                self.checkpoint.write(str(writer.file(CKPT_PREFIX)))
                return writer.commit(meta)
        scratch = Path(tempfile.mkdtemp(prefix="phalanx-tf-scratch-", dir=self.scratch_root))
        try:
            self.checkpoint.write(str(scratch / CKPT_PREFIX))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

    def restore(self, ckpt: Checkpoint) -> None:
        # expect_partial: optimizer slots of variables the program no longer has are not an error.
        self.checkpoint.read(str(ckpt.file(CKPT_PREFIX))).expect_partial()
