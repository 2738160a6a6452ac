"""Helpers to run the reference trainers as real processes with the env the operator would set."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("operator", "trainers", "dev", "."))
TORCH_TRAINER = "phalanx_trainer.examples.pytorch_ddp"
TF_TRAINER = "phalanx_trainer.examples.tensorflow_mwms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHALANX_", "PET_", "TF_CONFIG", "TPU_"))}
    for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"):
        env.pop(k, None)
    env.update(PYTHONPATH=PYTHONPATH, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"timed out after {timeout}s; output:\n{self.output()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)


@dataclass
class Job:
    procs: list[Proc] = field(default_factory=list)

    def wait(self, timeout: float = 120) -> list[int]:
        deadline = time.monotonic() + timeout
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in self.procs]

    def wait_ok(self, timeout: float = 120) -> None:
        codes = self.wait(timeout)
        if any(codes):
            logs = "\n".join(
                f"--- proc {i} exit {c}\n{p.output()[-3000:]}"
                for i, (p, c) in enumerate(zip(self.procs, codes, strict=True))
            )
            raise AssertionError(f"exit codes {codes}\n{logs}")

    def kill(self) -> None:
        for p in self.procs:
            p.signal(signal.SIGKILL)
        for p in self.procs:
            p.popen.wait()

    @property
    def chief(self) -> Proc:
        return self.procs[0]


def spawn(module: str, args: Sequence[str], env: dict[str, str], log: Path) -> Proc:
    with open(log, "wb") as f:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT
        )
    return Proc(popen, log)


def start_torch_job(
    tmp: Path,
    world: int,
    args: Sequence[str],
    *,
    ckpt_dir: Path | None,
    attempt: int = 1,
    metrics_port: int | None = None,
    name: str = "job",
    ckpt_uri: str | None = None,
    env: dict[str, str] | None = None,
) -> Job:
    """One process per pod, as the operator sets it up: MASTER_*, WORLD_SIZE, RANK, NODE_RANK; `env`
    adds to every rank's."""
    port = free_port()
    job = Job()
    for rank in range(world):
        extra = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "NODE_RANK": str(rank),
            "PHALANX_REPLICA_INDEX": str(rank),
            "PHALANX_ATTEMPT": str(attempt),
            "PHALANX_JOB_NAME": name,
            "PHALANX_PROCS_PER_POD": "1",
        }
        if ckpt_dir is not None:
            extra["PHALANX_CHECKPOINT_DIR"] = str(ckpt_dir)
        if ckpt_uri is not None:
            extra["PHALANX_CHECKPOINT_URI"] = ckpt_uri
        if metrics_port is not None and rank == 0:
            extra["PHALANX_METRICS_PORT"] = str(metrics_port)
        extra.update(env or {})
        job.procs.append(spawn(TORCH_TRAINER, args, base_env(**extra), tmp / f"{name}-a{attempt}-r{rank}.log"))
    return job


def start_tf_job(
    tmp: Path, workers: int, args: Sequence[str], *, ckpt_dir: Path | None, attempt: int = 1, name: str = "tfjob"
) -> Job:
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    job = Job()
    for i in range(workers):
        extra = {
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}, "environment": "cloud"}
            ),
            "PHALANX_ATTEMPT": str(attempt),
            "PHALANX_REPLICA_INDEX": str(i),
            "PHALANX_JOB_NAME": name,
        }
        if ckpt_dir is not None:
            extra["PHALANX_CHECKPOINT_DIR"] = str(ckpt_dir)
        job.procs.append(spawn(TF_TRAINER, args, base_env(**extra), tmp / f"{name}-a{attempt}-w{i}.log"))
    return job


def progress_losses(output: str) -> list[float]:
    return [float(line.split()[3]) for line in output.splitlines() if line.startswith("step ") and " loss " in line]


def done_line(output: str) -> dict[str, str]:
    lines = [line for line in output.splitlines() if line.startswith("done ")]
    assert lines, f"no final line in output:\n{output[-3000:]}"
    words = lines[-1].split()
    return dict(zip(words[1::2], words[2::2], strict=False))


def wait_for(predicate: object, timeout: float, what: str, poll: float = 0.05) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
