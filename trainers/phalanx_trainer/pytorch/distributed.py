"""torch.distributed set-up from the contract, and the pod-level process launcher.

One process per pod: the operator sets RANK and the process initialises directly. Several per
pod: either torchrun starts them (it sets RANK/LOCAL_RANK/LOCAL_WORLD_SIZE) or the pod runs the
trainer once and `run_per_process` spawns PHALANX_PROCS_PER_POD processes with
torch.multiprocessing, giving each its rank; the total always matches WORLD_SIZE.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from phalanx import contract
from phalanx_trainer.checkpoint.store import Store, open_store
from phalanx_trainer.env import JobEnv, TorchEnv, read_job_env, read_torch_env
from phalanx_trainer.errors import ContractError, Preempted, PreflightFailed
from phalanx_trainer.inplace import watch_attempt
from phalanx_trainer.metrics import TrainerMetrics
from phalanx_trainer.preemption import PreemptionWatcher
from phalanx_trainer.pytorch.preflight import Preflight

log = logging.getLogger(__name__)
A = TypeVar("A")


@dataclass
class DistContext:
    """Everything a training process needs to know about its place in the job."""

    torch_env: TorchEnv
    job: JobEnv
    backend: str
    device: torch.device
    metrics: TrainerMetrics
    preemption: PreemptionWatcher
    store: Store | None
    # A gloo group for tiny control messages (the preemption stop vote, checkpoint step choice),
    # kept apart from the training group so it never queues behind gradient buckets and works
    # on CPU tensors even when training uses NCCL. None when the world has one process.
    control_group: Any = None
    _closed: bool = field(default=False, repr=False)

    @property
    def rank(self) -> int:
        assert self.torch_env.rank is not None
        return self.torch_env.rank

    @property
    def local_rank(self) -> int:
        assert self.torch_env.local_rank is not None
        return self.torch_env.local_rank

    @property
    def world_size(self) -> int:
        return self.torch_env.world_size

    @property
    def local_world_size(self) -> int:
        return self.torch_env.nproc_per_node

    @property
    def is_writer(self) -> bool:
        """Only global rank 0 writes checkpoints: DDP state is replicated, one copy is enough."""
        return self.rank == 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.preemption.uninstall()
        if dist.is_initialized():
            dist.destroy_process_group()


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(
    torch_env: TorchEnv | None = None,
    job: JobEnv | None = None,
    *,
    backend: str | None = None,
    timeout_s: float | None = None,
    serve_metrics: bool = True,
    metrics_addr: str = "0.0.0.0",
) -> DistContext:
    """Initialise the process group (NCCL on CUDA, Gloo on CPU), metrics and the SIGTERM watcher."""
    job = read_job_env() if job is None else job
    torch_env = read_torch_env() if torch_env is None else torch_env
    if torch_env.is_launcher:
        raise ContractError(
            contract.RANK,
            f"not set and {torch_env.nproc_per_node} processes per pod: start through run_per_process() or torchrun",
        )
    assert torch_env.rank is not None  # not a launcher, checked above
    # env:// reads these; torchrun children already have them, spawned children get them here.
    os.environ.update(torch_env.process_environ())
    backend = backend or default_backend()
    local_rank = torch_env.local_rank or 0
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")

    # Watch SIGTERM before the (possibly long) rendezvous so an early termination is not lost.
    preemption = PreemptionWatcher().install()
    watch_attempt(job)  # restartMode InPlace: leave when the gang moves to a new attempt
    metrics = TrainerMetrics(enabled=local_rank == 0, local_world_size=torch_env.nproc_per_node)
    metrics.set_identity(
        world_size=torch_env.world_size,
        rank=torch_env.rank or 0,
        attempt=job.attempt,
        procs_per_pod=torch_env.nproc_per_node,
    )
    if serve_metrics and job.metrics_port is not None and local_rank == 0:
        metrics.serve(job.metrics_port, addr=metrics_addr)

    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    check = Preflight(job.preflight) if job.preflight is not None else None
    if check is not None:
        # The preflight's rendezvous has its own short timeout; the group keeps torch's default for
        # collectives, so a long checkpoint save on rank 0 never times its peers out.
        check.resolve_peers()
        kwargs["store"] = check.rendezvous(
            os.environ[contract.MASTER_ADDR],
            int(os.environ[contract.MASTER_PORT]),
            torch_env.world_size,
            torch_env.rank,
        )
    else:
        kwargs["init_method"] = "env://"
    dist.init_process_group(backend=backend, world_size=torch_env.world_size, rank=torch_env.rank, **kwargs)
    if check is not None:
        result = check.all_reduce(device, torch_env.world_size)
        metrics.set_preflight(result.seconds, result.bus_bytes_per_second)
        if torch_env.rank == 0:
            print(result.line(), flush=True)
    control = dist.new_group(backend="gloo") if torch_env.world_size > 1 else None
    return DistContext(
        torch_env=torch_env,
        job=job,
        backend=backend,
        device=device,
        metrics=metrics,
        preemption=preemption,
        store=open_store(job),
        control_group=control,
    )


@contextmanager
def distributed(**kwargs: Any) -> Iterator[DistContext]:
    """`with distributed() as ctx:` -- init_distributed(), and tear the group down afterwards."""
    ctx = init_distributed(**kwargs)
    try:
        yield ctx
    except BaseException:
        # A collective that failed on a lost peer leaves a group whose teardown blocks (about 2 s measured
        # with Gloo) while the process is about to exit anyway: leave it, so the pod restarts sooner.
        ctx.preemption.uninstall()
        raise
    ctx.close()


# --- the pod-level launcher ------------------------------------------------------------------------


def _child_main(local_rank: int, worker: Callable[[TorchEnv, A], None], torch_env: TorchEnv, arg: A) -> None:
    # Runs in a spawned process: exit with the contract's codes, as the CLI would.
    env = torch_env.for_local_rank(local_rank)
    os.environ.update(env.process_environ())
    try:
        worker(env, arg)
    except Preempted:
        sys.stdout.flush()
        os._exit(contract.EXIT_PREEMPTED)
    except ContractError as e:
        print(f"rank {env.rank}: bad contract: {e}", file=sys.stderr, flush=True)
        os._exit(contract.EXIT_BAD_CONTRACT)
    except PreflightFailed as e:
        print(f"rank {env.rank}: preflight failed: {e}", file=sys.stderr, flush=True)
        os._exit(contract.EXIT_PREFLIGHT_FAILED)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def run_per_process(
    worker: Callable[[TorchEnv, A], None], arg: A, torch_env: TorchEnv | None = None, *, kill_grace_s: float = 10.0
) -> int:
    """Run `worker(torch_env, arg)` once per process of this pod and return the pod's exit code.

    Without a launcher role (one process per pod, or under torchrun) this calls the worker in this
    process. Otherwise it spawns `nproc_per_node` processes (`worker` and `arg` must pickle),
    forwards SIGTERM to them, and when one fails kills the rest after `kill_grace_s` (they would
    otherwise hang in a collective with a dead peer). The exit code is 0, EXIT_PREEMPTED if any
    child was preempted and none failed otherwise, or the first failing child's code.
    """
    torch_env = read_torch_env() if torch_env is None else torch_env
    if not torch_env.is_launcher:
        worker(torch_env, arg)
        return 0
    ctx = tmp.get_context("spawn")
    procs = [
        ctx.Process(target=_child_main, args=(i, worker, torch_env, arg), name=f"phalanx-rank-{i}")
        for i in range(torch_env.nproc_per_node)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    previous = signal.signal(signal.SIGTERM, forward)
    failed: int | None = None
    preempted = False
    failed_at = 0.0
    try:
        while any(p.exitcode is None for p in procs):
            for p in procs:
                p.join(timeout=0.2)
                code = p.exitcode
                if code is None or code == 0:
                    continue
                code = 128 - code if code < 0 else code  # killed by a signal: shell convention
                if code == contract.EXIT_PREEMPTED:
                    preempted = True
                elif failed is None:
                    failed, failed_at = code, time.monotonic()
                    log.error("local rank process %s exited %d; stopping its siblings", p.name, code)
                    forward(signal.SIGTERM, None)
            if failed is not None and time.monotonic() - failed_at > kill_grace_s:
                for p in procs:
                    if p.exitcode is None:
                        p.kill()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            p.join()
    if failed is not None:
        return failed
    return contract.EXIT_PREEMPTED if preempted else 0
