"""In-place gang restart (runPolicy.restartMode InPlace): leave when the gang moves to a new attempt.

The operator moves every pod of the gang to the new attempt by its label, which the downward API
projects into a file (contract.ATTEMPT_FILE). When the file names another attempt than the one this
process started in, the process exits EXIT_RESTART_IN_PLACE at once: the kubelet then restarts every
container of the pod (RestartAllContainers), and the new run reads the new attempt from its env and
resumes from the newest committed checkpoint, as any restarted rank does. Nothing is saved on the way
out: the gang restarts because a rank failed, and the last committed checkpoint is the consistent one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from phalanx import contract
from phalanx_trainer.env import JobEnv

POLL_SECONDS = 0.25  # the kubelet rewrites the file within about a second of the label change
_watching = False  # one watcher per process: the examples start it before importing torch, init_distributed too


def current_attempt(path: Path) -> int | None:
    """The attempt the file names; None while it is missing or half-written."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def watch_attempt(
    job: JobEnv, exit: Callable[[int], object] = os._exit, poll: float = POLL_SECONDS
) -> threading.Thread | None:
    """Start a daemon thread that exits the process when the pod moves to another attempt; None when the
    job does not restart in place (no ATTEMPT_FILE). `exit` is os._exit: the training loop may be blocked
    in a collective whose peer is gone, where no exception or signal handler would run."""
    global _watching
    path = job.attempt_file
    if path is None or _watching:
        return None
    _watching = True

    def run() -> None:
        while True:
            now = current_attempt(path)
            if now is not None and now != job.attempt:
                print(f"attempt {job.attempt} -> {now}: the gang restarts in place; exiting "
                      f"{contract.EXIT_RESTART_IN_PLACE}", flush=True)  # fmt: skip
                exit(contract.EXIT_RESTART_IN_PLACE)
                return
            time.sleep(poll)

    thread = threading.Thread(target=run, name="phalanx-attempt-watch", daemon=True)
    thread.start()
    return thread
