"""torch adapter for the checkpoint store: torch.save into a writer, torch.load from a checkpoint.

Files hold full (replicated, unsharded) state dicts, so any world size can load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from phalanx_trainer.checkpoint.store import Checkpoint, Writer


def save_object(writer: Writer, name: str, obj: Any) -> Path:
    # A path (not a Python file object) lets torch use its C++ writer; commit() fsyncs it.
    path = writer.file(name)
    torch.save(obj, str(path))
    return path


def load_object(ckpt: Checkpoint, name: str, map_location: str | torch.device = "cpu") -> Any:
    # weights_only: a checkpoint directory may be shared; never unpickle arbitrary code from it.
    return torch.load(str(ckpt.file(name)), map_location=map_location, weights_only=True)
