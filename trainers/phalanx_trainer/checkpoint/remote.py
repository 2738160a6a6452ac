"""The checkpoint store on an object store (PHALANX_CHECKPOINT_URI: s3://, gs://, any fsspec URL).

Same layout and the same rule as the directory store -- a checkpoint counts only once its
COMMITTED marker exists and the files it lists have the listed sizes -- but object stores have no
rename and no fsync, so the protocol leans on the marker alone:
 1. the adapter writes into a local staging directory (frameworks want local paths);
 2. the files are uploaded under <uri>/step-N/ (each object PUT is atomic; a killed upload leaves
    a step without a marker, which readers ignore and the next writer removes);
 3. the marker object is written last, after the upload's sizes were checked.
Readers download a committed checkpoint into a local cache directory (once) before loading.
Pruning deletes the marker first. The filesystem package (s3fs, gcsfs, adlfs) must be installed
in the trainer image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phalanx import contract
from phalanx_trainer.checkpoint.store import COMMIT_MARKER, FORMAT_VERSION, Checkpoint, StagedWriter
from phalanx_trainer.env import DEFAULT_CHECKPOINT_KEEP
from phalanx_trainer.errors import RuntimeConfigError

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_STEP_DIGITS = 12


class RemoteCheckpointStore:
    def __init__(self, uri: str, keep: int = DEFAULT_CHECKPOINT_KEEP, *, cache_dir: Path | None = None) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        try:
            import fsspec
        except ImportError:
            raise RuntimeConfigError(
                f"{contract.CHECKPOINT_URI}={uri}: the fsspec package is not installed in the trainer image"
            ) from None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise RuntimeConfigError(f"{contract.CHECKPOINT_URI}={uri}: {e}") from None
        self.uri = uri
        self.keep = keep
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "phalanx-checkpoint-cache" / digest

    def __repr__(self) -> str:
        return f"RemoteCheckpointStore({self.uri!r}, keep={self.keep})"

    def _step_path(self, step: int) -> str:
        return f"{self.root.rstrip('/')}/step-{step:0{_STEP_DIGITS}d}"

    def _step_paths(self) -> list[tuple[int, str]]:
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            m = _STEP_DIR.match(name)
            if m:
                found.append((int(m.group(1)), str(entry).rstrip("/")))
        found.sort()
        return found

    def _read_marker(self, step: int, path: str) -> Checkpoint | None:
        try:
            doc = json.loads(self.fs.cat_file(f"{path}/{COMMIT_MARKER}"))
            files = {str(k): int(v) for k, v in doc["files"].items()}
            meta = doc.get("meta") or {}
            created, marker_step, fmt = float(doc["created"]), int(doc["step"]), int(doc["format"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("ignoring %s: bad commit marker (%s)", path, e)
            return None
        if fmt > FORMAT_VERSION or marker_step != step:
            return None
        listing = {
            str(name)[len(path) + 1 :]: int(info["size"]) for name, info in self.fs.find(path, detail=True).items()
        }
        for name, size in files.items():
            if listing.get(name) != size:
                log.warning("ignoring %s: %s is missing or has the wrong size", path, name)
                return None
        return Checkpoint(
            step=step, path=self.cache_dir / f"step-{step:0{_STEP_DIGITS}d}", created=created, files=files, meta=meta
        )

    def committed(self) -> list[Checkpoint]:
        """Committed checkpoints, oldest first; not downloaded (use get() or latest() to load one)."""
        out = []
        for step, path in self._step_paths():
            ckpt = self._read_marker(step, path)
            if ckpt is not None:
                out.append(ckpt)
        return out

    def latest(self) -> Checkpoint | None:
        for step, path in reversed(self._step_paths()):
            ckpt = self._read_marker(step, path)
            if ckpt is not None:
                return self._download(ckpt, path)
        return None

    def get(self, step: int) -> Checkpoint | None:
        path = self._step_path(step)
        ckpt = self._read_marker(step, path)
        return None if ckpt is None else self._download(ckpt, path)

    def _download(self, ckpt: Checkpoint, path: str) -> Checkpoint:
        local = ckpt.path
        if local.is_dir() and all(
            (local / n).is_file() and (local / n).stat().st_size == s for n, s in ckpt.files.items()
        ):
            return ckpt
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        for name in ckpt.files:
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{path}/{name}", str(target))
        shutil.rmtree(local, ignore_errors=True)
        os.replace(staging, local)  # other readers on this host never see a half-downloaded copy
        return ckpt

    def begin(self, step: int) -> RemoteCheckpointWriter:
        if step < 0:
            raise ValueError("step must be >= 0")
        return RemoteCheckpointWriter(self, step)

    def cleanup_incomplete(self) -> list[str]:
        """Remove steps without a valid marker (killed uploads), then prune to `keep`."""
        removed: list[str] = []
        for step, path in self._step_paths():
            if self._read_marker(step, path) is None:
                self.fs.rm(path, recursive=True)
                removed.append(path.rsplit("/", 1)[-1])
        self.prune()
        return removed

    def prune(self) -> list[int]:
        committed = self.committed()
        doomed = committed[: max(0, len(committed) - self.keep)]
        for ckpt in doomed:
            path = self._step_path(ckpt.step)
            self.fs.rm_file(f"{path}/{COMMIT_MARKER}")  # uncommit first
            self.fs.rm(path, recursive=True)
            shutil.rmtree(ckpt.path, ignore_errors=True)
        return [c.step for c in doomed]


class RemoteCheckpointWriter(StagedWriter):
    def __init__(self, store: RemoteCheckpointStore, step: int) -> None:
        self.store = store
        self.step = step
        self.path = Path(tempfile.mkdtemp(prefix=f"phalanx-upload-{step}-"))
        self._done = False

    def file(self, name: str) -> Path:
        return self.path / name

    def commit(self, meta: Mapping[str, Any] | None = None) -> Checkpoint:
        if self._done:
            raise RuntimeError("checkpoint already committed or aborted")
        store, fs = self.store, self.store.fs
        files = {str(p.relative_to(self.path)): p.stat().st_size for p in sorted(self.path.rglob("*")) if p.is_file()}
        if COMMIT_MARKER in files:
            raise ValueError(f"a checkpoint file may not be named {COMMIT_MARKER}")
        remote = store._step_path(self.step)
        if fs.exists(remote):  # an earlier save of this step, or a killed upload of it
            if fs.exists(f"{remote}/{COMMIT_MARKER}"):
                fs.rm_file(f"{remote}/{COMMIT_MARKER}")
            fs.rm(remote, recursive=True)
        for name in files:
            target = f"{remote}/{name}"
            # A no-op on object stores; file-like backends (local://, sftp) need the directories.
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(self.path / name), target)
        created = time.time()
        marker: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "step": self.step,
            "created": created,
            "files": files,
            "meta": dict(meta or {}),
        }
        # Check what arrived before vouching for it.
        listing = {str(n)[len(remote) + 1 :]: int(i["size"]) for n, i in fs.find(remote, detail=True).items()}
        if any(listing.get(n) != s for n, s in files.items()):
            raise OSError(f"upload of checkpoint step {self.step} to {store.uri} is incomplete")
        fs.pipe_file(f"{remote}/{COMMIT_MARKER}", json.dumps(marker, sort_keys=True).encode())
        self._done = True
        # The staging copy becomes the local cache entry: no download needed to resume on this host.
        cached = store.cache_dir / f"step-{self.step:0{_STEP_DIGITS}d}"
        store.cache_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cached, ignore_errors=True)
        shutil.move(str(self.path), cached)
        store.prune()
        return Checkpoint(step=self.step, path=cached, created=created, files=files, meta=marker["meta"])
