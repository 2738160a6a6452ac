"""The operator-to-trainer env contract, parsed into frozen dataclasses and validated.

Every reader takes the environment as a mapping (default `os.environ`) so the rules are unit-tested
without touching the process env. Any missing or garbled value raises `ContractError` naming the
variable; the CLI turns that into one stderr line and exit code EXIT_BAD_CONTRACT.

Only the framework variables are mandatory (a PyTorch process cannot rendezvous without
MASTER_ADDR); the PHALANX_* ones have defaults so a trainer also runs outside Kubernetes, but a
PHALANX_* value that is present and garbled is still an error rather than silently ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

from phalanx import contract
from phalanx_trainer.errors import ContractError

Environ = Mapping[str, str]

DEFAULT_CHECKPOINT_KEEP = 3
# torchrun sets these in each worker process it starts; they are not part of the operator contract.
LOCAL_RANK = "LOCAL_RANK"
GROUP_RANK = "GROUP_RANK"
TF_ROLES = ("chief", "worker", "evaluator")


# --- small typed getters ---------------------------------------------------------------------------


def get_str(environ: Environ, name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _require(environ: Environ, name: str, why: str) -> str:
    value = get_str(environ, name)
    if value is None:
        raise ContractError(name, f"not set ({why})")
    return value


def parse_int(name: str, raw: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise ContractError(name, f"expected an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ContractError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ContractError(name, f"must be <= {maximum}, got {value}")
    return value


def _opt_int(environ: Environ, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    raw = get_str(environ, name)
    return None if raw is None else parse_int(name, raw, minimum=minimum, maximum=maximum)


def _opt_float(environ: Environ, name: str, *, minimum: float) -> float | None:
    raw = get_str(environ, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ContractError(name, f"expected a number, got {raw!r}") from None
    if not value >= minimum:  # written this way so NaN fails too
        raise ContractError(name, f"must be >= {minimum}, got {raw}")
    return value


def _port(environ: Environ, name: str) -> int | None:
    return _opt_int(environ, name, minimum=1, maximum=65535)


# --- phalanx's own variables -----------------------------------------------------------------------


@dataclass(frozen=True)
class PreflightEnv:
    """spec.preflight as the operator passes it (PHALANX_PREFLIGHT_*)."""

    peers: tuple[str, ...]  # every pod's DNS name
    allreduce_bytes: int
    timeout_seconds: float


def read_preflight_env(env: Environ) -> PreflightEnv | None:
    raw = get_str(env, contract.PREFLIGHT_PEERS)
    if raw is None:
        return None
    peers = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not peers:
        raise ContractError(contract.PREFLIGHT_PEERS, f"names no peer: {raw!r}")
    return PreflightEnv(
        peers=peers,
        allreduce_bytes=_opt_int(env, contract.PREFLIGHT_ALLREDUCE_BYTES, minimum=4, maximum=2**34) or 2**26,
        timeout_seconds=_opt_float(env, contract.PREFLIGHT_TIMEOUT_SECONDS, minimum=1.0) or 120.0,
    )


@dataclass(frozen=True)
class JobEnv:
    """The PHALANX_* part of the contract, shared by every framework."""

    job_name: str
    attempt: int  # 1-based gang attempt
    replica_index: int  # the pod's index in the gang
    procs_per_pod: int
    checkpoint_dir: Path | None
    checkpoint_uri: str | None  # a remote fsspec URL (s3://, gs://, ...); None for a directory
    checkpoint_keep: int
    checkpoint_interval_seconds: float | None
    metrics_port: int | None  # None: do not serve metrics
    preflight: PreflightEnv | None = None  # None: no preflight check
    attempt_file: Path | None = None  # restartMode InPlace: the pod's current attempt (inplace.py)

    @property
    def is_restart(self) -> bool:
        return self.attempt > 1


def _attempt(env: Environ) -> int:
    """PHALANX_ATTEMPT, or the newer attempt of ATTEMPT_FILE (restartMode InPlace): the kubelet resolves
    the env from its copy of the pod, which can lag the label the operator just moved by a moment; the
    file it keeps up to date, and a run that started in that moment belongs to the new attempt."""
    attempt = _opt_int(env, contract.ATTEMPT, minimum=1) or 1
    path = get_str(env, contract.ATTEMPT_FILE)
    if path:
        with contextlib.suppress(OSError, ValueError):
            attempt = max(attempt, int(Path(path).read_text().strip()))
    return attempt


def read_job_env(environ: Environ | None = None) -> JobEnv:
    env = os.environ if environ is None else environ
    checkpoint_dir = get_str(env, contract.CHECKPOINT_DIR)
    uri = get_str(env, contract.CHECKPOINT_URI)
    path: Path | None = Path(checkpoint_dir) if checkpoint_dir else None
    remote: str | None = None
    if uri is not None:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            uri_path = Path(parsed.path if parsed.scheme == "file" else uri)
            if path is not None and path != uri_path:
                raise ContractError(
                    contract.CHECKPOINT_URI,
                    f"{uri!r} disagrees with {contract.CHECKPOINT_DIR}={checkpoint_dir!r}",
                )
            path = uri_path
        elif path is not None:
            raise ContractError(
                contract.CHECKPOINT_URI, f"{uri!r} and {contract.CHECKPOINT_DIR}={checkpoint_dir!r}: set only one"
            )
        elif not parsed.netloc and not parsed.path.strip("/"):
            raise ContractError(contract.CHECKPOINT_URI, f"{uri!r} names no bucket or path")
        else:
            remote = uri
    if path is not None and not path.is_absolute():
        raise ContractError(contract.CHECKPOINT_DIR, f"must be an absolute path, got {str(path)!r}")
    return JobEnv(
        job_name=get_str(env, contract.JOB_NAME) or "local",
        attempt=_attempt(env),
        replica_index=_opt_int(env, contract.REPLICA_INDEX, minimum=0) or 0,
        procs_per_pod=_opt_int(env, contract.PROCS_PER_POD, minimum=1) or 1,
        checkpoint_dir=path,
        checkpoint_uri=remote,
        checkpoint_keep=_opt_int(env, contract.CHECKPOINT_KEEP, minimum=1) or DEFAULT_CHECKPOINT_KEEP,
        checkpoint_interval_seconds=_opt_float(env, contract.CHECKPOINT_INTERVAL_SECONDS, minimum=0.0) or None,
        metrics_port=_port(env, contract.METRICS_PORT),
        preflight=read_preflight_env(env),
        attempt_file=Path(f) if (f := get_str(env, contract.ATTEMPT_FILE)) else None,
    )


# --- PyTorch ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchEnv:
    """Where this process sits in a torch.distributed job.

    `rank`/`local_rank` are None in a pod-level launcher: a pod that runs several processes but
    was not started by torchrun. The runtime then spawns `nproc_per_node` processes itself and
    each child gets `for_local_rank(i)`.
    """

    master_addr: str
    master_port: int
    world_size: int
    nnodes: int
    nproc_per_node: int
    node_rank: int
    rank: int | None
    local_rank: int | None

    @property
    def is_launcher(self) -> bool:
        return self.rank is None

    def for_local_rank(self, local_rank: int) -> TorchEnv:
        if not 0 <= local_rank < self.nproc_per_node:
            raise ValueError(f"local rank {local_rank} outside 0..{self.nproc_per_node - 1}")
        return replace(self, local_rank=local_rank, rank=self.node_rank * self.nproc_per_node + local_rank)

    def process_environ(self) -> dict[str, str]:
        """The variables torch.distributed's env:// init reads, for this (non-launcher) process."""
        if self.rank is None or self.local_rank is None:
            raise ValueError("a launcher has no rank; call for_local_rank() first")
        return {
            contract.MASTER_ADDR: self.master_addr,
            contract.MASTER_PORT: str(self.master_port),
            contract.WORLD_SIZE: str(self.world_size),
            contract.RANK: str(self.rank),
            LOCAL_RANK: str(self.local_rank),
            contract.LOCAL_WORLD_SIZE: str(self.nproc_per_node),
            contract.NODE_RANK: str(self.node_rank),
        }


def read_torch_env(environ: Environ | None = None) -> TorchEnv:
    env = os.environ if environ is None else environ
    why = "the operator sets it for PyTorch jobs; torch.distributed needs it to rendezvous"
    master_addr = _require(env, contract.MASTER_ADDR, why)
    master_port = parse_int(contract.MASTER_PORT, _require(env, contract.MASTER_PORT, why), minimum=1, maximum=65535)
    world_size = parse_int(contract.WORLD_SIZE, _require(env, contract.WORLD_SIZE, why), minimum=1)

    # Processes per pod: torchrun's LOCAL_WORLD_SIZE wins (it is what really runs), then the
    # operator's own count, then torchrun's PET_ input. PET_NPROC_PER_NODE may legally be "gpu" or
    # "auto" for torchrun itself; we only use it when it is a number.
    nproc = _opt_int(env, contract.LOCAL_WORLD_SIZE, minimum=1)
    nproc_source = contract.LOCAL_WORLD_SIZE
    if nproc is None:
        nproc = _opt_int(env, contract.PROCS_PER_POD, minimum=1)
        nproc_source = contract.PROCS_PER_POD
    if nproc is None:
        pet = get_str(env, contract.PET_NPROC_PER_NODE)
        if pet is not None and pet.isdigit():
            nproc = parse_int(contract.PET_NPROC_PER_NODE, pet, minimum=1)
            nproc_source = contract.PET_NPROC_PER_NODE
    if nproc is None:
        nproc = 1
    if world_size % nproc:
        raise ContractError(
            contract.WORLD_SIZE, f"{world_size} is not a multiple of {nproc_source}={nproc} (procs per pod)"
        )
    nnodes = world_size // nproc
    pet_nnodes = get_str(env, contract.PET_NNODES)
    if pet_nnodes is not None and pet_nnodes.isdigit() and int(pet_nnodes) != nnodes:
        raise ContractError(
            contract.PET_NNODES,
            f"{pet_nnodes} pods disagree with {contract.WORLD_SIZE}={world_size} / {nproc} procs per pod",
        )

    local_rank = _opt_int(env, LOCAL_RANK, minimum=0)
    rank = _opt_int(env, contract.RANK, minimum=0)
    if local_rank is not None and local_rank >= nproc:
        raise ContractError(LOCAL_RANK, f"{local_rank} >= {nproc} processes per pod")
    if local_rank is not None and rank is None:
        raise ContractError(contract.RANK, f"not set although {LOCAL_RANK} is (torchrun sets both)")
    if rank is None and nproc == 1:
        raise ContractError(contract.RANK, "not set (the operator sets it when one process runs per pod)")
    if rank is not None and rank >= world_size:
        raise ContractError(contract.RANK, f"{rank} is not below {contract.WORLD_SIZE}={world_size}")
    if rank is not None and local_rank is None:
        if nproc != 1:
            raise ContractError(LOCAL_RANK, f"not set although {contract.RANK} is and {nproc} processes run per pod")
        local_rank = 0

    node_rank = None
    for name in (contract.NODE_RANK, contract.PET_NODE_RANK, GROUP_RANK, contract.REPLICA_INDEX):
        node_rank = _opt_int(env, name, minimum=0)
        if node_rank is not None:
            node_source = name
            break
    if node_rank is None:
        if rank is None:
            raise ContractError(contract.NODE_RANK, "not set (needed to number this pod's processes)")
        node_rank, node_source = rank // nproc, contract.RANK
    if node_rank >= nnodes:
        raise ContractError(node_source, f"{node_rank} is not below the {nnodes} pods implied by {contract.WORLD_SIZE}")
    if rank is not None and rank // nproc != node_rank:
        raise ContractError(contract.RANK, f"{rank} does not belong to pod {node_rank} ({nproc} processes per pod)")
    return TorchEnv(
        master_addr=master_addr,
        master_port=master_port,
        world_size=world_size,
        nnodes=nnodes,
        nproc_per_node=nproc,
        node_rank=node_rank,
        rank=rank,
        local_rank=local_rank,
    )


# --- TensorFlow ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TfEnv:
    """TF_CONFIG, validated. Roles are lowercase; "ps" is refused (MWMS has no parameter servers)."""

    cluster: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int
    raw: str

    @property
    def has_chief_role(self) -> bool:
        return "chief" in self.cluster

    @property
    def is_chief(self) -> bool:
        # TF's rule: the "chief" task if the cluster has one, otherwise worker 0.
        if self.has_chief_role:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def is_evaluator(self) -> bool:
        return self.task_type == "evaluator"

    @property
    def num_workers(self) -> int:
        """Tasks that train (chief + workers), i.e. the all-reduce group size."""
        return len(self.cluster.get("chief", ())) + len(self.cluster.get("worker", ()))

    @property
    def worker_rank(self) -> int:
        """This task's position in the training group: the chief first, then workers by index."""
        if self.task_type == "chief":
            return 0
        if self.task_type == "worker":
            return len(self.cluster.get("chief", ())) + self.task_index
        raise ValueError(f"a {self.task_type} task does not train")


def _address_ok(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def parse_tf_config(raw: str) -> TfEnv:
    name = contract.TF_CONFIG
    try:
        doc: Any = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ContractError(name, f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(doc, dict):
        raise ContractError(name, "must be a JSON object with 'cluster' and 'task'")
    cluster_doc = doc.get("cluster")
    if not isinstance(cluster_doc, dict) or not cluster_doc:
        raise ContractError(name, "'cluster' must be a non-empty object of role -> list of host:port")
    cluster: dict[str, tuple[str, ...]] = {}
    for role, addresses in cluster_doc.items():
        if role == "ps":
            raise ContractError(name, "cluster has a 'ps' role; MultiWorkerMirroredStrategy has no parameter servers")
        if role not in TF_ROLES:
            raise ContractError(name, f"unknown role {role!r} in 'cluster' (expected one of {', '.join(TF_ROLES)})")
        if not isinstance(addresses, list) or not addresses:
            raise ContractError(name, f"cluster.{role} must be a non-empty list of host:port")
        for address in addresses:
            if not isinstance(address, str) or not _address_ok(address):
                raise ContractError(name, f"cluster.{role} has {address!r}, expected host:port")
        cluster[role] = tuple(addresses)
    if len(cluster.get("chief", ())) > 1:
        raise ContractError(name, "cluster.chief must have exactly one address")
    if "chief" not in cluster and "worker" not in cluster:
        raise ContractError(name, "cluster has neither a 'chief' nor a 'worker' role")
    task = doc.get("task")
    if not isinstance(task, dict):
        raise ContractError(name, "'task' must be an object with 'type' and 'index'")
    task_type = task.get("type")
    task_index = task.get("index", 0)
    if not isinstance(task_type, str) or task_type not in cluster:
        raise ContractError(name, f"task.type {task_type!r} is not a role in 'cluster' ({', '.join(cluster)})")
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        raise ContractError(name, f"task.index must be an integer, got {task_index!r}")
    if not 0 <= task_index < len(cluster[task_type]):
        raise ContractError(
            name, f"task.index {task_index} outside cluster.{task_type} (size {len(cluster[task_type])})"
        )
    return TfEnv(cluster=MappingProxyType(cluster), task_type=task_type, task_index=task_index, raw=raw)


def read_tf_env(environ: Environ | None = None) -> TfEnv:
    env = os.environ if environ is None else environ
    raw = _require(env, contract.TF_CONFIG, "the operator sets it for TensorFlow jobs")
    return parse_tf_config(raw)
