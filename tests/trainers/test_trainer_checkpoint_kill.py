"""SIGKILL at random moments of checkpoint saves never leaves an unloadable newest checkpoint."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from phalanx_trainer.checkpoint import torch_io  # noqa: E402
from phalanx_trainer.checkpoint.store import CheckpointStore  # noqa: E402

pytestmark = pytest.mark.training

KILLS = 50


def _saver(root: Path) -> None:
    """Child: what a restarted writer does -- clean up, then save step after step, forever."""
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    store = CheckpointStore(root, keep=2)
    store.cleanup_incomplete()
    latest = store.latest()
    step = latest.step if latest else 0
    while True:
        step += 1
        with store.begin(step) as w:
            # ~0.5 MB in two files; every value encodes the step so a mixed-up file is detected.
            torch_io.save_object(
                w, "model.pt", {"w": torch.full((256, 256), float(step)), "b": torch.full((64,), float(step))}
            )
            torch_io.save_object(w, "trainer.pt", {"step": torch.tensor(step), "m": torch.full((64, 64), float(step))})
            w.commit({"progress": {"step": step}})


def test_sigkill_during_saves_newest_committed_always_loads(tmp_path: Path) -> None:
    rng = random.Random(1234)
    # Kill delays scale with how long one save takes on this machine right now (fsync speed varies
    # a lot on a shared box), so kills land before, inside and between saves everywhere.
    probe = CheckpointStore(tmp_path / "probe", keep=1)
    t0 = time.perf_counter()
    for step in (1, 2, 3):
        with probe.begin(step) as w:
            torch_io.save_object(w, "model.pt", {"w": torch.full((256, 256), 0.0)})
            w.commit({})
    save_s = (time.perf_counter() - t0) / 3
    shutil.rmtree(tmp_path / "probe")
    store = CheckpointStore(tmp_path, keep=2)
    newest_seen = 0
    interrupted = 0  # kills that left a half-written save behind (proof they hit mid-save)
    started = time.monotonic()
    for _ in range(KILLS):
        pid = os.fork()  # torch is already imported here, so each child starts in microseconds
        if pid == 0:
            try:
                _saver(tmp_path)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 4 * save_s))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

        names = [p.name for p in tmp_path.iterdir()]
        committed = {c.path.name for c in store.committed()}
        interrupted += any(n not in committed for n in names)
        latest = store.latest()
        if latest is None:
            assert newest_seen == 0, "a committed checkpoint disappeared"
            continue
        assert latest.step >= newest_seen, "the newest committed checkpoint went backwards"
        newest_seen = latest.step
        model = torch_io.load_object(latest, "model.pt")
        trainer = torch_io.load_object(latest, "trainer.pt")
        assert int(trainer["step"]) == latest.step == latest.meta["progress"]["step"]
        assert float(model["w"][0, 0]) == float(model["w"][-1, -1]) == float(model["b"][-1]) == latest.step
        assert float(trainer["m"][-1, -1]) == latest.step
        # keep-K: a kill between a commit and its prune leaves one extra, never more.
        assert len(committed) <= 3

    assert newest_seen >= 5, "the children hardly ever got a save through; the test proves nothing"
    assert interrupted >= KILLS // 5, f"only {interrupted} of {KILLS} kills landed inside a save"
    print(f"{KILLS} kills: newest step {newest_seen}, {interrupted} interrupted saves")
    store.cleanup_incomplete()  # what the next writer does first
    assert [c.path.name for c in store.committed()] == sorted(p.name for p in tmp_path.iterdir())
    assert len(store.committed()) == 2
    assert time.monotonic() - started < 120
