"""SIGKILL at random moments of checkpoint saves never loses an acknowledged save and never leaves
an unloadable newest checkpoint."""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import statistics
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from phalanx_trainer.checkpoint import torch_io  # noqa: E402
from phalanx_trainer.checkpoint.store import CheckpointStore  # noqa: E402

pytestmark = pytest.mark.training

KILLS = 50


def _save(store: CheckpointStore, step: int) -> None:
    with store.begin(step) as w:
        # ~0.3 MB in two files; every value encodes the step so a mixed-up file is detected.
        torch_io.save_object(
            w, "model.pt", {"w": torch.full((256, 256), float(step)), "b": torch.full((64,), float(step))}
        )
        torch_io.save_object(w, "trainer.pt", {"step": torch.tensor(step), "m": torch.full((64, 64), float(step))})
        w.commit({"progress": {"step": step}})


def _saver(root: Path, report: int) -> None:
    """Child: what a restarted writer does -- clean up, then save step after step, forever,
    writing one byte to `report` when it is ready and one after each commit returned."""
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    store = CheckpointStore(root, keep=2)
    store.cleanup_incomplete()
    latest = store.latest()
    step = latest.step if latest else 0
    os.write(report, b".")
    while True:
        step += 1
        _save(store, step)
        os.write(report, b".")


def _await_reports(fd: int, count: int) -> None:
    for _ in range(count):
        if not select.select([fd], [], [], 60)[0]:
            pytest.fail("the saver reported nothing for 60 s")
        if not os.read(fd, 1):
            pytest.fail("the saver exited before it was killed")


def test_sigkill_during_saves_newest_committed_always_loads(tmp_path: Path) -> None:
    rng = random.Random(1234)
    # Kill delays scale with how long the child's save takes on this machine right now (fsync speed
    # varies a lot on a shared box); the child's reports anchor each delay to a known point.
    probe = CheckpointStore(tmp_path / "probe", keep=1)
    times = []
    for step in (1, 2, 3):
        t0 = time.perf_counter()
        _save(probe, step)
        times.append(time.perf_counter() - t0)
    save_s = statistics.median(times)
    shutil.rmtree(tmp_path / "probe")

    store = CheckpointStore(tmp_path, keep=2)
    newest_seen = 0
    interrupted = 0  # kills that left a half-written save behind (proof they hit mid-save)
    for _ in range(KILLS):
        # Kill right after start (inside clean-up), inside the first save, or after one commit.
        commits = rng.choice((None, 0, 1))
        r, w = os.pipe()
        pid = os.fork()  # torch is already imported here, so each child starts in microseconds
        if pid == 0:
            try:
                os.close(r)
                _saver(tmp_path, w)
            finally:
                os._exit(1)
        os.close(w)
        try:
            if commits is not None:
                _await_reports(r, 1 + commits)  # ready, then each returned commit
            time.sleep(rng.uniform(0.0, 1.5 * save_s))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(r)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        floor = newest_seen + (commits or 0)  # an acknowledged commit is durable

        names = [p.name for p in tmp_path.iterdir()]
        committed = {c.path.name for c in store.committed()}
        interrupted += any(n not in committed for n in names)
        latest = store.latest()
        if latest is None:
            assert floor == 0, "a committed checkpoint disappeared"
            continue
        assert latest.step >= floor, f"newest committed step {latest.step}, but step {floor} was acknowledged"
        newest_seen = latest.step
        model = torch_io.load_object(latest, "model.pt")
        trainer = torch_io.load_object(latest, "trainer.pt")
        assert int(trainer["step"]) == latest.step == latest.meta["progress"]["step"]
        assert float(model["w"][0, 0]) == float(model["w"][-1, -1]) == float(model["b"][-1]) == latest.step
        assert float(trainer["m"][-1, -1]) == latest.step
        # keep-K: a kill between a commit and its prune leaves one extra, never more.
        assert len(committed) <= 3

    assert interrupted >= KILLS // 5, f"only {interrupted} of {KILLS} kills landed inside a save"
    print(f"{KILLS} kills: newest step {newest_seen}, {interrupted} interrupted saves")
    store.cleanup_incomplete()  # what the next writer does first
    assert [c.path.name for c in store.committed()] == sorted(p.name for p in tmp_path.iterdir())
    assert len(store.committed()) == 2
