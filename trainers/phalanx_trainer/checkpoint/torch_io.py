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
    # Skip the per-record CRC32: torch.load never checks it (it reads files saved without one),
    # it cost a third of the save time of a 256 MiB state here, and torn writes are already ruled
    # out by the atomic commit and the marker's sizes. Process-global, so restored afterwards.
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(obj, str(path))
    finally:
        torch.serialization.set_crc32_options(previous)
    return path


def load_object(ckpt: Checkpoint, name: str, map_location: str | torch.device = "cpu") -> Any:
    # weights_only: a checkpoint directory may be shared; never unpickle arbitrary code from it.
    return torch.load(str(ckpt.file(name)), map_location=map_location, weights_only=True)
