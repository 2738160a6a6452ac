"""How a GKE TPU VM slice is found, as a pure function of the env (no TensorFlow import).

GKE's TPU webhook (and phalanx's operator, which sets the same names) gives every host of a slice
TPU_WORKER_ID (this host's index) and TPU_WORKER_HOSTNAMES (all hosts, comma-separated, in worker
order). TensorFlow's TPUClusterResolver does not read those: on a single host it wants
tpu='local' (the chips are attached to this VM); across hosts it accepts a comma-separated list
of grpc://host:8470 endpoints (the TPU worker port), which needs no Cloud TPU API call and hence
no credentials. `resolve_tpu` turns the env into exactly those constructor arguments.

Nothing here can run on the CPU-only machines phalanx is tested on; `make_tpu_strategy` in
`phalanx_trainer.tensorflow.tpu_strategy` is the only part that touches TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from phalanx import contract
from phalanx_trainer.env import Environ, get_str, parse_int
from phalanx_trainer.errors import ContractError

TPU_WORKER_PORT = 8470


@dataclass(frozen=True)
class TpuResolution:
    """The arguments for TPUClusterResolver plus what the trainer needs to know about its host."""

    tpu: str  # 'local' or 'grpc://h0:8470,grpc://h1:8470,...'
    worker_id: int
    hostnames: tuple[str, ...]  # empty on a single host without TPU_WORKER_HOSTNAMES
    accelerator_type: str | None  # e.g. v5litepod-8 (TPU_ACCELERATOR_TYPE)
    topology: str | None  # e.g. 2x4 (TPU_TOPOLOGY)

    @property
    def multi_host(self) -> bool:
        return len(self.hostnames) > 1

    @property
    def is_coordinator(self) -> bool:
        # The TF coordination service leader is worker 0 (TPUClusterResolver's own rule).
        return self.worker_id == 0


def resolve_tpu(environ: Environ | None = None) -> TpuResolution:
    env = os.environ if environ is None else environ
    raw_hosts = get_str(env, contract.TPU_WORKER_HOSTNAMES)
    hostnames: tuple[str, ...] = ()
    if raw_hosts is not None:
        hostnames = tuple(h.strip() for h in raw_hosts.split(","))
        if any(not h for h in hostnames):
            raise ContractError(contract.TPU_WORKER_HOSTNAMES, f"has an empty entry: {raw_hosts!r}")
        if any(":" in h or "/" in h for h in hostnames):
            raise ContractError(
                contract.TPU_WORKER_HOSTNAMES, f"expected bare hostnames (no port or scheme), got {raw_hosts!r}"
            )
        if len(set(hostnames)) != len(hostnames):
            raise ContractError(contract.TPU_WORKER_HOSTNAMES, f"lists a host twice: {raw_hosts!r}")

    raw_id = get_str(env, contract.TPU_WORKER_ID)
    if raw_id is None:
        if len(hostnames) > 1:
            raise ContractError(
                contract.TPU_WORKER_ID, f"not set although {contract.TPU_WORKER_HOSTNAMES} lists {len(hostnames)} hosts"
            )
        worker_id = 0
    else:
        worker_id = parse_int(contract.TPU_WORKER_ID, raw_id, minimum=0)
    host_count = max(len(hostnames), 1)
    if worker_id >= host_count:
        raise ContractError(contract.TPU_WORKER_ID, f"{worker_id} is not below the {host_count} host(s) of the slice")

    tpu = "local" if host_count == 1 else ",".join(f"grpc://{h}:{TPU_WORKER_PORT}" for h in hostnames)
    return TpuResolution(
        tpu=tpu,
        worker_id=worker_id,
        hostnames=hostnames,
        accelerator_type=get_str(env, contract.TPU_ACCELERATOR_TYPE),
        topology=get_str(env, contract.TPU_TOPOLOGY),
    )
