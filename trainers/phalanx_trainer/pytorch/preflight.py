"""The gang-wide preflight check (spec.preflight), run by every rank before training starts.

Three steps, each with the cause named when it fails (docs/health.md):
1. every peer pod's DNS name resolves (the headless Service publishes them before the pods are
   ready; a name that still does not resolve near the deadline is a DNS or network problem);
2. the rendezvous completes: every rank reaches the master's store within the time left;
3. an all-reduce of a known size completes, timed; its bus bandwidth (the NCCL-tests definition,
   2 (n-1)/n x bytes / time) goes to the trainer's metrics and the operator's status.
A failure raises PreflightFailed: the CLI exits EXIT_PREFLIGHT_FAILED and the operator restarts the
gang off this pod's node.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore  # what torch.distributed re-exports, typed

from phalanx_trainer.env import PreflightEnv
from phalanx_trainer.errors import PreflightFailed

RESOLVE_RETRY_SECONDS = 0.5
# Peers come up within seconds of each other: a name that does not resolve for this long is a real
# problem, however long the whole check may take.
RESOLVE_SECONDS = 20.0
# The training collectives' timeout the store goes back to once the rendezvous is done.
STORE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class PreflightResult:
    seconds: float  # the whole check: resolution, rendezvous, all-reduce
    nbytes: int
    allreduce_seconds: float
    bus_bytes_per_second: float

    def line(self) -> str:
        return (
            f"preflight passed in {self.seconds:.2f}s: all-reduce of {self.nbytes / 2**20:.1f} MiB in "
            f"{self.allreduce_seconds * 1000:.1f} ms, bus bandwidth {self.bus_bytes_per_second / 1e9:.3f} GB/s"
        )


class Preflight:
    def __init__(self, env: PreflightEnv) -> None:
        self.env = env
        self.started = time.monotonic()
        self.deadline = self.started + env.timeout_seconds

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.1)

    def resolve_peers(self) -> None:
        give_up = min(self.deadline, self.started + RESOLVE_SECONDS)
        for host in self.env.peers:
            while True:
                try:
                    socket.getaddrinfo(host, None)
                    break
                except OSError as e:
                    if time.monotonic() >= give_up:
                        waited = time.monotonic() - self.started
                        raise PreflightFailed(f"peer {host} does not resolve after {waited:.0f}s: {e}") from None
                    time.sleep(RESOLVE_RETRY_SECONDS)

    def rendezvous(self, master: str, port: int, world_size: int, rank: int) -> TCPStore:
        """The master's TCP store with every rank connected, within the time left."""
        left = self.left()
        try:
            store = TCPStore(
                master, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=left), wait_for_workers=True
            )
        except (RuntimeError, ValueError, OSError) as e:  # torch's DistStoreError and friends
            raise PreflightFailed(
                f"rendezvous at {master}:{port} with {world_size} ranks did not complete within {left:.0f}s: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        store.set_timeout(STORE_TIMEOUT)
        return store

    def all_reduce(self, device: torch.device, world_size: int) -> PreflightResult:
        n = max(self.env.allreduce_bytes // 4, 1)
        data = torch.ones(n, dtype=torch.float32, device=device)
        warm = torch.ones(1, dtype=torch.float32, device=device)
        try:
            dist.all_reduce(warm)  # connections set up outside the timed all-reduce
            _sync(device)
            t0 = time.perf_counter()
            dist.all_reduce(data)
            _sync(device)
            took = time.perf_counter() - t0
        except (RuntimeError, ValueError) as e:
            raise PreflightFailed(f"all-reduce of {n * 4} bytes failed: {str(e).splitlines()[0]}") from None
        if float(data[0].item()) != float(world_size):
            raise PreflightFailed(
                f"all-reduce gave {float(data[0].item())}, expected {world_size}: a corrupt collective"
            )
        bus = 2 * (world_size - 1) / world_size * n * 4 / took if world_size > 1 and took > 0 else 0.0
        return PreflightResult(time.monotonic() - self.started, n * 4, took, bus)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
