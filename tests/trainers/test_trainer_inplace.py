"""The trainer's side of an in-place gang restart (phalanx_trainer/inplace.py, env.py): it leaves with
EXIT_RESTART_IN_PLACE once the pod's attempt file names another attempt, and a run that starts while
the kubelet's env still lags the label takes the file's newer attempt."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from phalanx import contract
from phalanx_trainer import inplace
from phalanx_trainer.env import read_job_env

pytestmark = pytest.mark.training


@pytest.fixture(autouse=True)
def fresh_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inplace, "_watching", False)


def env(tmp_path: Path, env_attempt: int, file_attempt: str | None) -> dict[str, str]:
    path = tmp_path / "attempt"
    if file_attempt is not None:
        path.write_text(file_attempt)
    return {contract.ATTEMPT: str(env_attempt), contract.ATTEMPT_FILE: str(path)}


def test_the_trainer_leaves_with_the_in_place_code_when_the_gang_moves_on(tmp_path: Path) -> None:
    job = read_job_env(env(tmp_path, 1, "1"))
    exited: list[int] = []
    done = threading.Event()

    def exit(code: int) -> None:
        exited.append(code)
        done.set()

    thread = inplace.watch_attempt(job, exit=exit, poll=0.01)
    assert thread is not None
    assert not done.wait(0.1) and exited == []  # the same attempt: it trains on
    (tmp_path / "attempt").write_text("2\n")
    assert done.wait(5) and exited == [contract.EXIT_RESTART_IN_PLACE]
    thread.join(5)
    assert not thread.is_alive()
    # One watcher per process: a second call (init_distributed after the example's main) starts none.
    assert inplace.watch_attempt(job, exit=exit) is None


def test_a_half_written_or_missing_file_is_not_a_new_attempt(tmp_path: Path) -> None:
    assert inplace.current_attempt(tmp_path / "missing") is None
    (tmp_path / "attempt").write_text("")
    assert inplace.current_attempt(tmp_path / "attempt") is None


def test_without_an_attempt_file_nothing_is_watched(tmp_path: Path) -> None:
    assert inplace.watch_attempt(read_job_env({contract.ATTEMPT: "1"})) is None


def test_a_run_started_with_a_lagging_env_takes_the_newer_attempt_of_the_file(tmp_path: Path) -> None:
    assert read_job_env(env(tmp_path, 1, "2")).attempt == 2
    assert read_job_env(env(tmp_path, 3, "2")).attempt == 3  # never back to an older one
    assert read_job_env(env(tmp_path, 2, None)).attempt == 2  # no file yet
    assert read_job_env(env(tmp_path, 2, "garbled")).attempt == 2
