"""Checkpoint storage: the claim every pod of every attempt mounts, checked before any pod exists.

Pure: the spec and the claims that exist in, the claim to create or the reason it cannot work out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from phalanx.api.models import RetainPolicy
from phalanx.core import names
from phalanx.core.gang import Gang
from phalanx.core.model import Manifest

LABEL_CHECKPOINT = "phalanx.dev/checkpoint"
SHARED_MODES = {"ReadWriteMany"}
INVALID = "CheckpointStorageInvalid"


@dataclass(frozen=True)
class ClaimView:
    name: str
    access_modes: tuple[str, ...] = ()
    phase: str = "Pending"
    labels: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False


@dataclass
class StorageCheck:
    create: list[Manifest] = field(default_factory=list)
    problem: str | None = None  # a human message; the job waits with reason CheckpointStorageInvalid
    waiting: str | None = None  # not wrong, just not there yet (a claim we just created)


def claim_name(gang: Gang) -> str | None:
    ckpt = gang.spec.checkpoint
    if ckpt is None or ckpt.uri:
        return None
    return ckpt.claim_name or names.checkpoint_claim_name(gang.job)


def build_claim(gang: Gang) -> Manifest:
    """The operator's own claim. Without an ownerReference it outlives the job (Retain); with
    retainPolicy Delete it is owned by the job and garbage-collected with it."""
    ckpt = gang.spec.checkpoint
    assert ckpt is not None and ckpt.storage is not None
    meta: dict[str, Any] = {
        "name": names.checkpoint_claim_name(gang.job),
        "namespace": gang.namespace,
        "labels": {names.LABEL_JOB: gang.job, LABEL_CHECKPOINT: "true", names.LABEL_MANAGED_BY: names.MANAGER},
        "annotations": {"phalanx.dev/retain-policy": ckpt.retain_policy.value},
    }
    if ckpt.retain_policy is RetainPolicy.DELETE:
        from phalanx.core.pods import owner_reference

        meta["ownerReferences"] = [owner_reference(gang)]
    spec: dict[str, Any] = {
        "accessModes": [ckpt.storage.access_mode.value],
        "resources": {"requests": {"storage": ckpt.storage.size}},
    }
    if ckpt.storage.storage_class_name is not None:
        spec["storageClassName"] = ckpt.storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def check(gang: Gang, claims: Mapping[str, ClaimView]) -> StorageCheck:
    ckpt = gang.spec.checkpoint
    name = claim_name(gang)
    result = StorageCheck()
    if ckpt is None or name is None:
        return result
    claim = claims.get(name)
    if claim is None:
        if ckpt.storage is not None:
            result.create.append(build_claim(gang))
            result.waiting = f"creating PersistentVolumeClaim {name} for checkpoints"
        else:
            result.problem = (
                f"spec.checkpoint.claimName: PersistentVolumeClaim {name} does not exist in namespace "
                f"{gang.namespace}; create it or use checkpoint.storage to have phalanx provision one"
            )
        return result
    if claim.terminating:
        result.problem = f"PersistentVolumeClaim {name} is being deleted; it cannot hold this job's checkpoints"
        return result
    if gang.replicas > 1 and claim.access_modes and not SHARED_MODES & set(claim.access_modes):
        result.problem = (
            f"PersistentVolumeClaim {name} is {'/'.join(claim.access_modes)} but the job has {gang.replicas} pods "
            "that may run on several nodes and all read the checkpoint on resume; use a ReadWriteMany claim"
        )
    return result
