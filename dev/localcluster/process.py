"""Start and stop the control plane's processes, by pid, and only the ones we started."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
# Resolved now, in the parent: the child between fork and exec must not dlopen (a lock another thread
# held at fork time would deadlock it); there it only makes one foreign call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to kill it when its parent (the test
    # runner) dies, so a killed pytest leaves no control plane behind. SIGKILL, not SIGTERM: all
    # components get it at once, and an apiserver whose etcd vanished hangs in graceful shutdown.
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def spawn(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, die_with_parent: bool = False
) -> subprocess.Popen[bytes]:
    """Start argv detached from our terminal (own session), output appended to log.

    Keep the returned Popen while you need the exit code; once dropped, Python's subprocess module
    still reaps the child when it ends, so a long-lived caller (pytest) collects no zombies.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    preexec: Callable[[], None] | None = _die_with_parent if die_with_parent else None
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # Ctrl-C in the shell that ran `up` must not kill the cluster
            preexec_fn=preexec,
            close_fds=True,
        )
    return proc


def _reap(pid: int) -> None:
    # When we are the parent (pytest fixture), a dead child stays a zombie until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the ')' closing the command name.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def runs(pid: int, exe: str) -> bool:
    """True if pid is alive and was started from exe (guards against a recycled pid)."""
    if not alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return argv0 == exe


def stop(pid: int, exe: str, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after timeout. Returns False if pid was not ours (nothing is sent)."""
    if not runs(pid, exe):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    return True


def end(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM a child we started, SIGKILL it if it is still there after `grace` seconds; reaps it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cmdline_mentions(text: str) -> list[int]:
    """Pids of live processes whose command line contains text."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of pid (VmHWM) in KiB, 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
