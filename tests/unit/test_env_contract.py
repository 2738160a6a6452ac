"""The exact env each rank gets, field by field, for 1, 2 and 8 workers (the contract with the trainers)."""

from __future__ import annotations

import json

import pytest

from phalanx.api.models import TrainingJobSpec
from phalanx.core.gang import Gang
from phalanx.core.pods import build_pod
from tests.unit.specs import NS, spec


def env_of(s: TrainingJobSpec, index: int, attempt: int = 1, job: str = "resnet") -> dict[str, str]:
    pod = build_pod(Gang(job, NS, "uid-1", s, attempt), index)
    container = pod["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("replicas", [1, 2, 8])
def test_pytorch_env_one_process_per_pod(replicas: int) -> None:
    s = spec(replicas=replicas)
    for index in range(replicas):
        assert env_of(s, index, attempt=3) == {
            "MASTER_ADDR": f"resnet-worker-0.resnet.{NS}.svc",
            "MASTER_PORT": "29500",
            "WORLD_SIZE": str(replicas),
            "RANK": str(index),
            "NODE_RANK": str(index),
            "LOCAL_WORLD_SIZE": "1",
            "PET_NNODES": str(replicas),
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": str(index),
            "PET_MASTER_ADDR": f"resnet-worker-0.resnet.{NS}.svc",
            "PET_MASTER_PORT": "29500",
            "PHALANX_JOB_NAME": "resnet",
            "PHALANX_NAMESPACE": NS,
            "PHALANX_FRAMEWORK": "pytorch",
            "PHALANX_STRATEGY": "ddp",
            "PHALANX_ATTEMPT": "3",
            "PHALANX_REPLICA_INDEX": str(index),
            "PHALANX_REPLICAS": str(replicas),
            "PHALANX_PROCS_PER_POD": "1",
            "PHALANX_METRICS_PORT": "9400",
            "PYTHONUNBUFFERED": "1",
        }


def test_pytorch_procs_per_pod_defaults_to_gpus_and_leaves_rank_to_torchrun() -> None:
    s = spec(replicas=8, resources={"gpus": 8})
    env = env_of(s, 5)
    assert env["WORLD_SIZE"] == "64"  # 8 pods x 8 GPUs: no confusion about world size
    assert env["PET_NPROC_PER_NODE"] == "8" and env["LOCAL_WORLD_SIZE"] == "8"
    assert env["NODE_RANK"] == "5" and env["PET_NODE_RANK"] == "5" and env["PET_NNODES"] == "8"
    assert "RANK" not in env  # torchrun assigns RANK = node_rank * 8 + local_rank per process


@pytest.mark.parametrize("replicas", [1, 2, 8])
def test_tensorflow_tf_config(replicas: int) -> None:
    s = spec("tensorflow", replicas=replicas)
    workers = [f"resnet-worker-{i}.resnet.{NS}.svc:2222" for i in range(replicas)]
    for index in range(replicas):
        env = env_of(s, index)
        assert json.loads(env["TF_CONFIG"]) == {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
            "environment": "cloud",
        }
        assert env["PHALANX_STRATEGY"] == "multiWorkerMirrored"
        assert not {"MASTER_ADDR", "RANK", "WORLD_SIZE"} & env.keys()


def test_checkpoint_env_and_user_env_override() -> None:
    s = spec(
        checkpoint={"claimName": "ckpt", "path": "/ckpt", "keep": 5, "intervalSeconds": 60},
        template={
            "spec": {
                "containers": [{"name": "trainer", "image": "img", "env": [{"name": "MASTER_PORT", "value": "23456"}]}]
            }
        },
    )
    env = env_of(s, 0)
    assert env["PHALANX_CHECKPOINT_DIR"] == "/ckpt"
    assert env["PHALANX_CHECKPOINT_KEEP"] == "5" and env["PHALANX_CHECKPOINT_INTERVAL_SECONDS"] == "60"
    assert env["MASTER_PORT"] == "23456"  # the user's own entry wins, and appears once


def test_object_store_credentials_come_from_secret_key_refs() -> None:
    s = spec(checkpoint={"uri": "s3://bucket/run", "secretRef": {"name": "s3", "keys": {"AWS_ACCESS_KEY_ID": "id"}}})
    env = env_of(s, 0)
    assert env["PHALANX_CHECKPOINT_URI"] == "s3://bucket/run" and "PHALANX_CHECKPOINT_DIR" not in env
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "id"}}
