"""Checkpoint storage wired by the operator, against the real control plane with static PersistentVolumes
(there is no provisioner here, so claims bind only to the PVs a test creates, as on a real cluster)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import sim
from tests.plugins.operator import JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")
CLASS = "phalanx-test-static"


@pytest.fixture
def static_pv(core_v1: client.CoreV1Api) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(size: str = "10Gi", modes: tuple[str, ...] = ("ReadWriteMany",)) -> str:
        name = f"pv-{uuid.uuid4().hex[:8]}"
        core_v1.create_persistent_volume(
            {
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": list(modes),
                    "storageClassName": CLASS,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/tmp/phalanx-pv/{name}"},
                },
            }
        )
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            core_v1.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def claim(core: client.CoreV1Api, ns: str, name: str, modes: tuple[str, ...] = ("ReadWriteMany",)) -> None:
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": list(modes),
                "storageClassName": CLASS,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )


def running(pods: list[Any], n: int) -> bool:
    return len(pods) == n and all(p.status.phase == "Running" for p in pods)


def claim_of(pod: Any) -> str:
    return next(v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim)


def test_existing_claim_is_mounted_by_every_pod_of_every_attempt(
    jobs: JobClient, namespace: str, static_pv: Callable[..., str]
) -> None:
    static_pv()
    claim(jobs.core, namespace, "shared")
    jobs.create(job_manifest("ck", replicas=2, checkpoint={"claimName": "shared", "path": "/ckpt"}))
    pods = jobs.wait_pods("ck", lambda ps: running(ps, 2), timeout=90)
    for p in pods:
        assert claim_of(p) == "shared"
        mounts = {m.mount_path: m.name for m in p.spec.containers[0].volume_mounts}
        assert mounts["/ckpt"] == "checkpoints"
        assert {e.name: e.value for e in p.spec.containers[0].env}["PHALANX_CHECKPOINT_DIR"] == "/ckpt"
    assert jobs.core.read_namespaced_persistent_volume_claim("shared", namespace).status.phase == "Bound"
    sim.make_pod_fail(jobs.core, namespace, "ck-a1-worker-0", exit_code=137)
    pods = jobs.wait_pods(
        "ck", lambda ps: running(ps, 2) and {p.metadata.labels["phalanx.dev/attempt"] for p in ps} == {"2"}, timeout=90
    )
    assert {claim_of(p) for p in pods} == {"shared"}  # a gang restart keeps the same volume


def test_provisioned_claim_outlives_job_and_is_reused(
    jobs: JobClient, namespace: str, static_pv: Callable[..., str]
) -> None:
    static_pv(size="20Gi")
    storage = {"size": "5Gi", "storageClassName": CLASS}
    jobs.create(job_manifest("keep", replicas=2, checkpoint={"storage": storage}))
    jobs.wait_pods("keep", lambda ps: running(ps, 2), timeout=90)
    pvc = jobs.core.read_namespaced_persistent_volume_claim("keep-checkpoints", namespace)
    assert pvc.spec.resources.requests["storage"] == "5Gi" and pvc.spec.storage_class_name == CLASS
    assert pvc.spec.access_modes == ["ReadWriteMany"] and pvc.status.phase == "Bound"
    assert pvc.metadata.labels["phalanx.dev/job-name"] == "keep" and not pvc.metadata.owner_references
    uid = pvc.metadata.uid

    jobs.delete("keep")
    jobs.wait_pods("keep", lambda ps: not ps, timeout=60, what="pods gone")
    left = jobs.core.read_namespaced_persistent_volume_claim("keep-checkpoints", namespace)
    assert left.metadata.uid == uid and left.metadata.deletion_timestamp is None

    jobs.create(job_manifest("keep", replicas=2, checkpoint={"storage": storage}))
    pods = jobs.wait_pods("keep", lambda ps: running(ps, 2), timeout=90)
    assert {claim_of(p) for p in pods} == {"keep-checkpoints"}
    assert jobs.core.read_namespaced_persistent_volume_claim("keep-checkpoints", namespace).metadata.uid == uid


def test_retain_policy_delete_removes_the_claim(jobs: JobClient, namespace: str, static_pv: Callable[..., str]) -> None:
    static_pv()
    ckpt = {"storage": {"size": "1Gi", "storageClassName": CLASS}, "retainPolicy": "Delete"}
    jobs.create(job_manifest("temp", replicas=1, checkpoint=ckpt))
    jobs.wait_pods("temp", lambda ps: running(ps, 1), timeout=90)
    pvc = jobs.core.read_namespaced_persistent_volume_claim("temp-checkpoints", namespace)
    assert pvc.metadata.owner_references[0].kind == "TrainingJob"
    jobs.delete("temp")

    def gone() -> bool:
        try:
            jobs.core.read_namespaced_persistent_volume_claim("temp-checkpoints", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    jobs.wait_pods("temp", lambda _: gone(), timeout=90, what="claim deleted with its job")


@pytest.mark.parametrize("case", ["missing", "rwo"])
def test_unusable_claim_gives_condition_and_no_pods(jobs: JobClient, namespace: str, case: str) -> None:
    if case == "rwo":
        claim(jobs.core, namespace, "single", modes=("ReadWriteOnce",))
    jobs.create(job_manifest("nope", replicas=4, checkpoint={"claimName": "single"}))
    job = jobs.wait(
        "nope",
        lambda j: any(c["reason"] == "CheckpointStorageInvalid" for c in (j.get("status") or {}).get("conditions", [])),
        what="CheckpointStorageInvalid",
    )
    admitted = jobs.condition("nope", "Admitted")
    assert admitted is not None and admitted["status"] == "False"
    assert ("does not exist" if case == "missing" else "ReadWriteOnce") in admitted["message"]
    assert job["status"]["state"] == "Queued" and jobs.pods("nope") == []


def test_object_store_checkpoint_passes_secret_by_reference(jobs: JobClient) -> None:
    ckpt = {
        "uri": "s3://ckpt-bucket/run-1",
        "secretRef": {"name": "s3-creds", "keys": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}},
    }
    jobs.create(job_manifest("s3", replicas=1, checkpoint=ckpt))
    pods = jobs.wait_pods("s3", lambda ps: len(ps) == 1)
    env = {e.name: e for e in pods[0].spec.containers[0].env}
    assert env["PHALANX_CHECKPOINT_URI"].value == "s3://ckpt-bucket/run-1" and "PHALANX_CHECKPOINT_DIR" not in env
    ref = env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("s3-creds", "secret")
    assert not any(v.persistent_volume_claim for v in pods[0].spec.volumes or [])
