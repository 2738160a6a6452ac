"""The contract between the operator and the training process: env names, ports, exit codes.

Defined once here and imported by both the operator (which writes the env) and the trainer
runtime (which reads it). Standard library only: this module is imported inside training pods.
"""

from __future__ import annotations

from typing import Final

# --- PyTorch: the names torch.distributed and torchrun read ---------------------------------
MASTER_ADDR: Final = "MASTER_ADDR"
MASTER_PORT: Final = "MASTER_PORT"
WORLD_SIZE: Final = "WORLD_SIZE"  # total ranks = replicas * procs per pod
RANK: Final = "RANK"  # set only when one process runs per pod (rank == node rank)
NODE_RANK: Final = "NODE_RANK"  # the pod's index
LOCAL_WORLD_SIZE: Final = "LOCAL_WORLD_SIZE"
PET_NNODES: Final = "PET_NNODES"
PET_NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
PET_NODE_RANK: Final = "PET_NODE_RANK"
PET_MASTER_ADDR: Final = "PET_MASTER_ADDR"
PET_MASTER_PORT: Final = "PET_MASTER_PORT"

# --- TensorFlow --------------------------------------------------------------------------------
TF_CONFIG: Final = "TF_CONFIG"
# What TPUClusterResolver and libtpu read on a GKE TPU VM slice (GKE's TPU webhook sets the same).
TPU_WORKER_ID: Final = "TPU_WORKER_ID"
TPU_WORKER_HOSTNAMES: Final = "TPU_WORKER_HOSTNAMES"
TPU_ACCELERATOR_TYPE: Final = "TPU_ACCELERATOR_TYPE"
TPU_TOPOLOGY: Final = "TPU_TOPOLOGY"

# --- phalanx's own -----------------------------------------------------------------------------
PREFIX: Final = "PHALANX_"
JOB_NAME: Final = "PHALANX_JOB_NAME"
NAMESPACE: Final = "PHALANX_NAMESPACE"
FRAMEWORK: Final = "PHALANX_FRAMEWORK"  # pytorch | tensorflow
STRATEGY: Final = "PHALANX_STRATEGY"  # ddp | multiWorkerMirrored | tpu
ATTEMPT: Final = "PHALANX_ATTEMPT"  # 1 for the first gang, +1 per gang restart
# runPolicy.restartMode InPlace: the file holding the pod's current attempt (its label, projected by the
# downward API). When it differs from PHALANX_ATTEMPT, the operator moved the gang to a new attempt:
# the trainer exits EXIT_RESTART_IN_PLACE and the kubelet restarts the pod's containers with it.
ATTEMPT_FILE: Final = "PHALANX_ATTEMPT_FILE"
REPLICA_INDEX: Final = "PHALANX_REPLICA_INDEX"  # the pod's index in the gang
REPLICAS: Final = "PHALANX_REPLICAS"
PROCS_PER_POD: Final = "PHALANX_PROCS_PER_POD"
CHECKPOINT_DIR: Final = "PHALANX_CHECKPOINT_DIR"  # a mounted directory shared by all attempts
CHECKPOINT_URI: Final = "PHALANX_CHECKPOINT_URI"  # or an fsspec URL (s3://, gs://, ...)
CHECKPOINT_KEEP: Final = "PHALANX_CHECKPOINT_KEEP"
CHECKPOINT_INTERVAL_SECONDS: Final = "PHALANX_CHECKPOINT_INTERVAL_SECONDS"
METRICS_PORT: Final = "PHALANX_METRICS_PORT"
# spec.preflight (docs/health.md): set only when it is on. Peers: every pod's DNS name, comma-separated.
PREFLIGHT_PEERS: Final = "PHALANX_PREFLIGHT_PEERS"
PREFLIGHT_ALLREDUCE_BYTES: Final = "PHALANX_PREFLIGHT_ALLREDUCE_BYTES"
PREFLIGHT_TIMEOUT_SECONDS: Final = "PHALANX_PREFLIGHT_TIMEOUT_SECONDS"

# --- Ports and exit codes ----------------------------------------------------------------------
DEFAULT_MASTER_PORT: Final = 29500
DEFAULT_TF_PORT: Final = 2222
DEFAULT_METRICS_PORT: Final = 9400
# Exit codes 128-255 are retryable (a signal, OOM kill, preemption); 1-127 are the program's own
# verdict and permanent under the default policy. A trainer that saved on SIGTERM exits with
# 128 + SIGTERM so the operator restarts the gang rather than failing the job.
RETRYABLE_EXIT_CODES: Final = range(128, 256)
EXIT_PREEMPTED: Final = 143
# A contract problem (env missing or garbled) is a permanent error.
EXIT_BAD_CONTRACT: Final = 2
# The gang-wide preflight check failed in this pod (a peer does not resolve, the rendezvous or the
# all-reduce did not complete): the operator restarts the gang off this pod's node.
EXIT_PREFLIGHT_FAILED: Final = 3
# The trainer left for an in-place gang restart it was asked for (ATTEMPT_FILE): not a failure.
EXIT_RESTART_IN_PLACE: Final = 199


def is_retryable_exit_code(code: int) -> bool:
    return code in RETRYABLE_EXIT_CODES
