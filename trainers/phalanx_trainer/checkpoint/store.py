"""A directory of step checkpoints with an atomic, crash-safe commit protocol.

Layout under the root (PHALANX_CHECKPOINT_DIR):

    step-000000000200/            a checkpoint; counts only once COMMITTED exists and checks out
        COMMITTED                 JSON: format, step, created, {file: size}, user meta
        model.pt, trainer.pt ...  whatever the framework adapter wrote
    .tmp-step-000000000300-<pid>-<token>/   a save in progress (or the leftovers of a killed one)

Commit protocol (`CheckpointWriter.commit`):
 1. the adapter writes its files into the temp directory (same filesystem, so rename is atomic);
 2. every file and directory under it is fsynced, and their sizes recorded;
 3. the temp directory is renamed to step-N and the root directory is fsynced;
 4. the COMMITTED marker is written under a temp name, fsynced, renamed into step-N, and step-N is
    fsynced.
A kill before 4 completes leaves a directory without a marker, which readers ignore and the next
writer removes. Readers also check that every file the marker lists exists with its recorded size,
so a marker can never vouch for a truncated file. Pruning (keep the newest K) deletes the marker
first, so a half-deleted checkpoint is never taken for a committed one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from phalanx_trainer.checkpoint.fsutil import fsync_dir, fsync_tree, write_bytes_durably
from phalanx_trainer.env import DEFAULT_CHECKPOINT_KEEP, JobEnv

log = logging.getLogger(__name__)

COMMIT_MARKER = "COMMITTED"
FORMAT_VERSION = 1
_STEP_DIGITS = 12  # zero-padded so a plain listing sorts by step
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-step-"
_TRASH_PREFIX = ".trash-step-"


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint, as its marker describes it."""

    step: int
    path: Path
    created: float  # unix time of the commit
    files: Mapping[str, int] = field(repr=False)  # relative path -> size in bytes
    meta: Mapping[str, Any] = field(repr=False)  # what the trainer passed to commit()

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def nbytes(self) -> int:
        return sum(self.files.values())


class CheckpointStore:
    def __init__(self, root: Path | str, keep: int = DEFAULT_CHECKPOINT_KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.root = Path(root)
        self.keep = keep

    @classmethod
    def from_job_env(cls, job: JobEnv) -> CheckpointStore | None:
        if job.checkpoint_dir is None:
            return None
        return cls(job.checkpoint_dir, keep=job.checkpoint_keep)

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.root)!r}, keep={self.keep})"

    def step_dir(self, step: int) -> Path:
        return self.root / f"step-{step:0{_STEP_DIGITS}d}"

    # --- reading -----------------------------------------------------------------------------

    def _step_dirs(self) -> list[tuple[int, Path]]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            m = _STEP_DIR.match(entry.name)
            if m and entry.is_dir(follow_symlinks=False):
                found.append((int(m.group(1)), Path(entry.path)))
        found.sort()
        return found

    def read(self, path: Path) -> Checkpoint | None:
        """The checkpoint in `path` if it is committed and intact, else None."""
        m = _STEP_DIR.match(path.name)
        if not m:
            return None
        try:
            doc = json.loads((path / COMMIT_MARKER).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring %s: unreadable commit marker (%s)", path, e)
            return None
        try:
            step = int(doc["step"])
            files = {str(k): int(v) for k, v in doc["files"].items()}
            created = float(doc["created"])
            meta = doc.get("meta") or {}
            fmt = int(doc["format"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warning("ignoring %s: malformed commit marker (%s)", path, e)
            return None
        if fmt > FORMAT_VERSION or step != int(m.group(1)):
            log.warning("ignoring %s: marker format %s / step %s does not match", path, fmt, step)
            return None
        for name, size in files.items():
            try:
                actual = (path / name).stat().st_size
            except FileNotFoundError:
                log.warning("ignoring %s: %s is missing", path, name)
                return None
            if actual != size:
                log.warning("ignoring %s: %s has %d bytes, the marker says %d", path, name, actual, size)
                return None
        return Checkpoint(step=step, path=path, created=created, files=files, meta=meta)

    def committed(self) -> list[Checkpoint]:
        """All committed checkpoints, oldest first."""
        out = []
        for _step, path in self._step_dirs():
            ckpt = self.read(path)
            if ckpt is not None:
                out.append(ckpt)
        return out

    def latest(self) -> Checkpoint | None:
        """The newest committed checkpoint; checks markers newest first and stops at the first good one."""
        for _step, path in reversed(self._step_dirs()):
            ckpt = self.read(path)
            if ckpt is not None:
                return ckpt
        return None

    def get(self, step: int) -> Checkpoint | None:
        return self.read(self.step_dir(step))

    # --- writing (only the rank that owns the checkpoint calls these) --------------------------

    def begin(self, step: int) -> CheckpointWriter:
        if step < 0:
            raise ValueError("step must be >= 0")
        return CheckpointWriter(self, step)

    def cleanup_incomplete(self) -> list[str]:
        """Remove leftovers of killed saves: temp dirs, trash, and step dirs without a valid marker;
        then prune to `keep` (a kill between a commit and its prune leaves one checkpoint too many).

        Call it once at start-up on the writing rank only, before the first save: a temp dir is
        assumed to belong to a dead writer (phalanx runs one writer per job at a time).
        """
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return removed
        for entry in entries:
            path = Path(entry.path)
            stale = entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) or (
                _STEP_DIR.match(entry.name) is not None and self.read(path) is None
            )
            if stale and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            fsync_dir(self.root)
            log.info("removed incomplete checkpoint leftovers: %s", ", ".join(sorted(removed)))
        self.prune()
        return removed

    def prune(self) -> list[int]:
        """Delete committed checkpoints beyond the newest `keep`; return their steps."""
        committed = self.committed()
        doomed = committed[: max(0, len(committed) - self.keep)]
        for ckpt in doomed:
            _uncommit(ckpt.path)
            shutil.rmtree(ckpt.path, ignore_errors=True)
        return [c.step for c in doomed]


def _uncommit(path: Path) -> None:
    # Marker first (and durably), so a crash mid-delete leaves an ignored, uncommitted directory.
    try:
        (path / COMMIT_MARKER).unlink()
    except FileNotFoundError:
        return
    fsync_dir(path)


class StagedWriter:
    """A checkpoint being written into a staging dir (`path`): leaving the `with` block without a
    commit throws the staging dir away, so a failed save never looks like a checkpoint."""

    path: Path
    _done: bool

    def abort(self) -> None:
        if not self._done:
            self._done = True
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class CheckpointWriter(StagedWriter):
    """One save in progress: write files under `path` (or `file(name)`), then `commit(meta)`.

    Used as a context manager, an exception (or leaving without commit) removes the temp dir.
    """

    def __init__(self, store: CheckpointStore, step: int) -> None:
        self.store = store
        self.step = step
        store.root.mkdir(parents=True, exist_ok=True)
        name = f"{_TMP_PREFIX}{step:0{_STEP_DIGITS}d}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = store.root / name
        self.path.mkdir()
        self._done = False

    def file(self, name: str) -> Path:
        return self.path / name

    def commit(self, meta: Mapping[str, Any] | None = None) -> Checkpoint:
        if self._done:
            raise RuntimeError("checkpoint already committed or aborted")
        store, root = self.store, self.store.root
        files = fsync_tree(self.path)
        if COMMIT_MARKER in files:
            raise ValueError(f"a checkpoint file may not be named {COMMIT_MARKER}")
        final = store.step_dir(self.step)
        trash: Path | None = None
        if final.exists():
            # Saving a step again (e.g. the final save right after a periodic one at the same
            # step): retire the old copy under a name readers ignore; older steps stay valid.
            trash = root / f"{_TRASH_PREFIX}{self.step:0{_STEP_DIGITS}d}-{secrets.token_hex(4)}"
            _uncommit(final)
            os.rename(final, trash)
        os.rename(self.path, final)
        fsync_dir(root)
        created = time.time()
        marker: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "step": self.step,
            "created": created,
            "files": files,
            "meta": dict(meta or {}),
        }
        write_bytes_durably(final / COMMIT_MARKER, json.dumps(marker, sort_keys=True).encode())
        self._done = True
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        store.prune()
        return Checkpoint(step=self.step, path=final, created=created, files=files, meta=marker["meta"])


class Writer(Protocol):
    """What the framework adapters need from a save in progress (local or remote store)."""

    step: int
    path: Path  # a local directory to write into

    def file(self, name: str) -> Path: ...
    def commit(self, meta: Mapping[str, Any] | None = None) -> Checkpoint: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Store(Protocol):
    """A checkpoint store: `CheckpointStore` (a directory) or `RemoteCheckpointStore` (fsspec URL)."""

    keep: int

    def latest(self) -> Checkpoint | None: ...
    def get(self, step: int) -> Checkpoint | None: ...
    def committed(self) -> list[Checkpoint]: ...
    def begin(self, step: int) -> Writer: ...
    def cleanup_incomplete(self) -> list[str]: ...
    def prune(self) -> list[int]: ...


def open_store(job: JobEnv) -> Store | None:
    """The store the contract names: PHALANX_CHECKPOINT_DIR (or a file:// URI), or a remote URI."""
    if job.checkpoint_uri is not None:
        from phalanx_trainer.checkpoint.remote import RemoteCheckpointStore

        return RemoteCheckpointStore(job.checkpoint_uri, keep=job.checkpoint_keep)
    return CheckpointStore.from_job_env(job)
