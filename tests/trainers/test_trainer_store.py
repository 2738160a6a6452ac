"""Unit tests of the checkpoint store: atomic commit, keep-K, uncommitted leftovers ignored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from phalanx_trainer.checkpoint.store import COMMIT_MARKER, CheckpointStore

pytestmark = pytest.mark.training


def save(store: CheckpointStore, step: int, payload: bytes = b"x" * 100, **meta: object) -> None:
    with store.begin(step) as w:
        w.file("state.bin").write_bytes(payload)
        (w.path / "sub").mkdir()
        (w.path / "sub" / "more.bin").write_bytes(payload[:10])
        w.commit(meta)


def test_commit_makes_a_checkpoint_with_marker_and_meta(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    assert store.latest() is None
    save(store, 7, b"abc", progress={"step": 7})
    ckpt = store.latest()
    assert ckpt is not None and ckpt.step == 7
    assert ckpt.path == tmp_path / "step-000000000007"
    assert ckpt.file("state.bin").read_bytes() == b"abc"
    assert dict(ckpt.files) == {"state.bin": 3, "sub/more.bin": 3}
    assert ckpt.meta["progress"] == {"step": 7}
    assert json.loads((ckpt.path / COMMIT_MARKER).read_text())["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000000007"]  # no temp dir left


def test_uncommitted_and_temp_dirs_are_ignored_then_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    save(store, 10)
    # A save killed after its rename but before the marker, and one killed while writing.
    (tmp_path / "step-000000000020").mkdir()
    (tmp_path / "step-000000000020" / "state.bin").write_bytes(b"partial")
    writer = store.begin(30)
    writer.file("state.bin").write_bytes(b"partial")
    assert store.latest().step == 10  # type: ignore[union-attr]
    assert [c.step for c in store.committed()] == [10]
    removed = store.cleanup_incomplete()
    assert sorted(removed) == sorted(["step-000000000020", writer.path.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000010"]


def test_marker_that_does_not_match_the_files_is_not_committed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    save(store, 1)
    save(store, 2)
    (tmp_path / "step-000000000002" / "state.bin").write_bytes(b"truncated")
    assert store.latest().step == 1  # type: ignore[union-attr]
    (tmp_path / "step-000000000001" / COMMIT_MARKER).write_text("{garbage")
    assert store.latest() is None


def test_keep_last_k(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (5, 10, 15, 20):
        save(store, step)
    assert [c.step for c in store.committed()] == [15, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000015", "step-000000000020"]


def test_abort_on_exception_leaves_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin(3) as w:
        w.file("a").write_bytes(b"1")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    save(store, 4, b"old")
    save(store, 4, b"new!")
    ckpt = store.latest()
    assert ckpt is not None and ckpt.file("state.bin").read_bytes() == b"new!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000004"]


def test_commit_fsyncs_files_and_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = CheckpointStore(tmp_path)
    with store.begin(1) as w:
        w.file("a.bin").write_bytes(b"1")
        tmp_dir = str(w.path)
        w.commit()
    final = str(tmp_path / "step-000000000001")
    assert f"{tmp_dir}/a.bin" in synced and tmp_dir in synced  # data before the rename
    assert str(tmp_path) in synced  # the rename itself
    assert final in synced  # the marker's rename
    assert synced.index(f"{tmp_dir}/a.bin") < synced.index(str(tmp_path))
