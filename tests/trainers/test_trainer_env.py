"""Unit tests of the env contract parsing (no subprocesses, no torch)."""

from __future__ import annotations

import json

import pytest

from phalanx_trainer.env import parse_tf_config, read_job_env, read_torch_env
from phalanx_trainer.errors import ContractError

PREFLIGHT_BYTES, PREFLIGHT_TIMEOUT = "PHALANX_PREFLIGHT_ALLREDUCE_BYTES", "PHALANX_PREFLIGHT_TIMEOUT_SECONDS"

pytestmark = pytest.mark.training

TORCH = {"MASTER_ADDR": "job-worker-0.job.ns.svc", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "2"}


def test_torch_one_process_per_pod() -> None:
    env = read_torch_env({**TORCH, "NODE_RANK": "2"})
    assert (env.rank, env.local_rank, env.node_rank, env.nnodes, env.nproc_per_node) == (2, 0, 2, 4, 1)
    assert not env.is_launcher
    assert env.process_environ()["RANK"] == "2"


def test_torch_node_rank_defaults_to_rank_with_one_proc_per_pod() -> None:
    assert read_torch_env(TORCH).node_rank == 2


def test_torch_launcher_with_several_procs_per_pod_then_children() -> None:
    environ = {k: v for k, v in TORCH.items() if k != "RANK"} | {
        "PHALANX_PROCS_PER_POD": "2",
        "NODE_RANK": "1",
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "2",
    }
    env = read_torch_env(environ)
    assert env.is_launcher and env.nnodes == 2 and env.nproc_per_node == 2
    child = env.for_local_rank(1)
    assert (child.rank, child.local_rank) == (3, 1)
    assert child.process_environ()["LOCAL_WORLD_SIZE"] == "2"


def test_torch_under_torchrun_uses_its_local_world_size() -> None:
    env = read_torch_env({**TORCH, "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"})
    assert (env.rank, env.local_rank, env.node_rank, env.nproc_per_node) == (3, 1, 1, 2)


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"MASTER_ADDR": None}, "MASTER_ADDR"),
        ({"MASTER_ADDR": "  "}, "MASTER_ADDR"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({"WORLD_SIZE": None}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "4"}, "RANK"),
        ({"RANK": "-1"}, "RANK"),
        ({"RANK": None}, "RANK"),
        ({"PHALANX_PROCS_PER_POD": "3"}, "WORLD_SIZE"),  # 4 ranks do not split into pods of 3
        ({"PET_NNODES": "3"}, "PET_NNODES"),
        ({"NODE_RANK": "1"}, "RANK"),  # rank 2 is not in pod 1 with one process per pod
        ({"LOCAL_RANK": "1"}, "LOCAL_RANK"),  # one process per pod, so local rank 1 cannot exist
    ],
)
def test_torch_bad_contract_names_the_variable(change: dict[str, str | None], variable: str) -> None:
    environ = {**TORCH}
    for k, v in change.items():
        if v is None:
            environ.pop(k)
        else:
            environ[k] = v
    with pytest.raises(ContractError) as e:
        read_torch_env(environ)
    assert e.value.variable == variable
    assert str(e.value).startswith(variable + ":")


def test_job_env_defaults_and_values(tmp_path: object) -> None:
    assert read_job_env({}).attempt == 1
    assert read_job_env({}).checkpoint_dir is None
    job = read_job_env(
        {
            "PHALANX_JOB_NAME": "j",
            "PHALANX_ATTEMPT": "3",
            "PHALANX_CHECKPOINT_DIR": "/ckpt",
            "PHALANX_CHECKPOINT_KEEP": "5",
            "PHALANX_CHECKPOINT_INTERVAL_SECONDS": "90",
            "PHALANX_METRICS_PORT": "9400",
            "PHALANX_PROCS_PER_POD": "8",
        }
    )
    assert (job.job_name, job.attempt, str(job.checkpoint_dir), job.checkpoint_keep) == ("j", 3, "/ckpt", 5)
    assert (job.checkpoint_interval_seconds, job.metrics_port, job.procs_per_pod, job.is_restart) == (
        90.0,
        9400,
        8,
        True,
    )
    assert str(read_job_env({"PHALANX_CHECKPOINT_URI": "file:///mnt/ck"}).checkpoint_dir) == "/mnt/ck"
    remote = read_job_env({"PHALANX_CHECKPOINT_URI": "s3://bucket/runs/j"})
    assert (remote.checkpoint_uri, remote.checkpoint_dir) == ("s3://bucket/runs/j", None)


def test_preflight_env_is_read_only_when_the_operator_sets_it() -> None:
    assert read_job_env({}).preflight is None
    pre = read_job_env({"PHALANX_PREFLIGHT_PEERS": "j-worker-0.j.ns.svc, j-worker-1.j.ns.svc"}).preflight
    assert pre is not None and pre.peers == ("j-worker-0.j.ns.svc", "j-worker-1.j.ns.svc")
    assert (pre.allreduce_bytes, pre.timeout_seconds) == (2**26, 120.0)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"PHALANX_ATTEMPT": "0"}, "PHALANX_ATTEMPT"),
        ({"PHALANX_ATTEMPT": "two"}, "PHALANX_ATTEMPT"),
        ({"PHALANX_CHECKPOINT_KEEP": "0"}, "PHALANX_CHECKPOINT_KEEP"),
        ({"PHALANX_CHECKPOINT_INTERVAL_SECONDS": "nan"}, "PHALANX_CHECKPOINT_INTERVAL_SECONDS"),
        ({"PHALANX_METRICS_PORT": "0"}, "PHALANX_METRICS_PORT"),
        ({"PHALANX_CHECKPOINT_DIR": "relative/dir"}, "PHALANX_CHECKPOINT_DIR"),
        ({"PHALANX_CHECKPOINT_URI": "s3://bucket/x", "PHALANX_CHECKPOINT_DIR": "/ckpt"}, "PHALANX_CHECKPOINT_URI"),
        ({"PHALANX_CHECKPOINT_URI": "file:///a", "PHALANX_CHECKPOINT_DIR": "/b"}, "PHALANX_CHECKPOINT_URI"),
        ({"PHALANX_CHECKPOINT_URI": "s3://"}, "PHALANX_CHECKPOINT_URI"),
        ({"PHALANX_PREFLIGHT_PEERS": " , "}, "PHALANX_PREFLIGHT_PEERS"),
        (
            {"PHALANX_PREFLIGHT_PEERS": "a", "PHALANX_PREFLIGHT_ALLREDUCE_BYTES": "1"},
            "PHALANX_PREFLIGHT_ALLREDUCE_BYTES",
        ),
        (
            {"PHALANX_PREFLIGHT_PEERS": "a", "PHALANX_PREFLIGHT_TIMEOUT_SECONDS": "soon"},
            "PHALANX_PREFLIGHT_TIMEOUT_SECONDS",
        ),
    ],
)
def test_job_env_garbled_values_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ContractError) as e:
        read_job_env(environ)
    assert e.value.variable == variable


def _tf(cluster: dict[str, list[str]], task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}, "environment": "cloud"})


def test_tf_config_workers_only_worker0_is_chief() -> None:
    cluster = {"worker": ["j-worker-0.j.ns.svc:2222", "j-worker-1.j.ns.svc:2222", "j-worker-2.j.ns.svc:2222"]}
    envs = [parse_tf_config(_tf(cluster, "worker", i)) for i in range(3)]
    assert [e.is_chief for e in envs] == [True, False, False]
    assert [e.worker_rank for e in envs] == [0, 1, 2]
    assert envs[0].num_workers == 3


def test_tf_config_with_a_chief_role() -> None:
    cluster = {"chief": ["j-chief-0:2222"], "worker": ["j-worker-0:2222", "j-worker-1:2222"]}
    chief = parse_tf_config(_tf(cluster, "chief", 0))
    worker0 = parse_tf_config(_tf(cluster, "worker", 0))
    assert chief.is_chief and not worker0.is_chief
    assert (chief.worker_rank, worker0.worker_rank, chief.num_workers) == (0, 1, 3)


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[]",
        json.dumps({"task": {"type": "worker", "index": 0}}),
        _tf({"worker": ["a:2222"]}, "worker", 1),
        _tf({"worker": ["a:2222"]}, "chief", 0),
        _tf({"worker": ["a"]}, "worker", 0),
        _tf({"worker": ["a:2222"], "ps": ["p:2222"]}, "worker", 0),
        _tf({"chief": ["a:1", "b:1"]}, "chief", 0),
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}),
    ],
)
def test_tf_config_garbled_is_a_contract_error(raw: str) -> None:
    with pytest.raises(ContractError) as e:
        parse_tf_config(raw)
    assert e.value.variable == "TF_CONFIG"
