"""The object-store checkpoint store (fsspec): marker protocol, keep-K, killed uploads ignored."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from phalanx_trainer.checkpoint.remote import RemoteCheckpointStore
from phalanx_trainer.checkpoint.store import COMMIT_MARKER, open_store
from phalanx_trainer.env import read_job_env
from phalanx_trainer.errors import RuntimeConfigError

pytest.importorskip("fsspec")
pytestmark = pytest.mark.training


@pytest.fixture
def store(tmp_path: Path) -> RemoteCheckpointStore:
    # fsspec's in-memory filesystem stands in for a bucket; a unique root per test.
    return RemoteCheckpointStore(f"memory://bucket/{uuid.uuid4().hex}/ckpt", keep=2, cache_dir=tmp_path / "cache")


def save(store: RemoteCheckpointStore, step: int, payload: bytes) -> None:
    with store.begin(step) as w:
        w.file("state.bin").write_bytes(payload)
        (w.path / "sub").mkdir()
        (w.path / "sub" / "x.bin").write_bytes(payload[:1])
        w.commit({"progress": {"step": step}})


def test_commit_upload_then_marker_and_download(store: RemoteCheckpointStore, tmp_path: Path) -> None:
    save(store, 3, b"three")
    fs, root = store.fs, store.root
    assert fs.exists(f"{root}/step-000000000003/{COMMIT_MARKER}")
    # A reader on another host: empty cache, so get() downloads.
    reader = RemoteCheckpointStore(store.uri, keep=2, cache_dir=tmp_path / "other-cache")
    ckpt = reader.latest()
    assert ckpt is not None and ckpt.step == 3 and ckpt.meta["progress"] == {"step": 3}
    assert ckpt.file("state.bin").read_bytes() == b"three"
    assert ckpt.file("sub/x.bin").read_bytes() == b"t"
    assert ckpt.path.parent == tmp_path / "other-cache"


def test_killed_upload_is_ignored_and_cleaned(store: RemoteCheckpointStore) -> None:
    save(store, 1, b"one")
    # An upload killed before its marker: files there, no COMMITTED.
    store.fs.pipe_file(f"{store.root}/step-000000000002/state.bin", b"par")
    assert [c.step for c in store.committed()] == [1]
    assert store.latest().step == 1  # type: ignore[union-attr]
    assert store.cleanup_incomplete() == ["step-000000000002"]
    assert not store.fs.exists(f"{store.root}/step-000000000002")


def test_marker_vouching_for_a_missing_file_is_not_committed(store: RemoteCheckpointStore) -> None:
    save(store, 1, b"one")
    save(store, 2, b"two")
    store.fs.rm_file(f"{store.root}/step-000000000002/state.bin")
    assert store.latest().step == 1  # type: ignore[union-attr]


def test_keep_k_and_same_step_resave(store: RemoteCheckpointStore) -> None:
    for step in (1, 2, 3):
        save(store, step, f"v{step}".encode())
    assert [c.step for c in store.committed()] == [2, 3]
    save(store, 3, b"again")
    assert store.get(3).file("state.bin").read_bytes() == b"again"  # type: ignore[union-attr]


def test_open_store_picks_the_remote_store_for_a_url() -> None:
    job = read_job_env({"PHALANX_CHECKPOINT_URI": "memory://bucket/x", "PHALANX_CHECKPOINT_KEEP": "4"})
    s = open_store(job)
    assert isinstance(s, RemoteCheckpointStore) and s.keep == 4


def test_missing_filesystem_package_is_a_clear_error() -> None:
    with pytest.raises(RuntimeConfigError, match="PHALANX_CHECKPOINT_URI=nosuchproto://b/x"):
        RemoteCheckpointStore("nosuchproto://b/x")
