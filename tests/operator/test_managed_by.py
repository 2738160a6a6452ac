"""spec.managedBy (core/managedby.py): a job another controller manages gets nothing from phalanx (no pods,
no Service, no status), and who manages a job is fixed at its creation, as the apiserver enforces.

The barrier for "nothing happened" is a job of phalanx's created after the foreign one in the same
namespace: once that one runs, phalanx has seen both jobs' events (kopf delivers them in order per kind).
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.plugins.operator import JobClient, job_manifest

pytestmark = pytest.mark.usefixtures("operator")
OTHER = "example.com/other-controller"


def test_a_job_managed_by_another_controller_gets_no_pods_and_no_status(jobs: JobClient) -> None:
    jobs.create(job_manifest("theirs", replicas=2, managedBy=OTHER))
    jobs.create(job_manifest("ours", replicas=2, managedBy="phalanx.dev/trainingjob-controller"))
    jobs.wait_state("ours", "Running")
    theirs = jobs.get("theirs")
    assert "status" not in theirs or not theirs["status"], theirs.get("status")
    assert jobs.pods("theirs") == []
    services = jobs.core.list_namespaced_service(jobs.ns).items
    assert [s.metadata.name for s in services] == ["ours"]


def test_the_status_another_controller_writes_is_left_alone_and_its_job_holds_up_none_of_ours(
    jobs: JobClient,
) -> None:
    # The other controller writes a status that reads like a waiting gang of all 32 H100 GPUs, older than
    # ours: phalanx neither corrects that status (as it would its own, test_foreign_status.py) nor lets
    # the job queue ahead of its gangs.
    jobs.create(job_manifest("theirs", replicas=4, resources={"gpus": 8}, managedBy=OTHER))
    written = jobs.custom.patch_namespaced_custom_object_status(
        "phalanx.dev", "v1alpha1", jobs.ns, "trainingjobs", "theirs", {"status": {"attempt": 1, "state": "Queued"}}
    )["status"]  # fmt: skip
    jobs.create(job_manifest("ours", replicas=1, resources={"gpus": 8}))
    jobs.wait_state("ours", "Running")
    assert jobs.pods("theirs") == []
    assert jobs.get("theirs")["status"] == written  # untouched by phalanx


def refused(jobs: JobClient, name: str, patch: Any) -> str:
    with pytest.raises(ApiException) as err:
        jobs.custom.patch_namespaced_custom_object(
            "phalanx.dev", "v1alpha1", jobs.ns, "trainingjobs", name, patch
        )  # fmt: skip
    assert err.value.status == 422, err.value.body
    return str(err.value.body)


def test_managed_by_cannot_change_be_added_or_removed(jobs: JobClient) -> None:
    jobs.create(job_manifest("fixed", replicas=1, managedBy=OTHER))
    jobs.create(job_manifest("plain", replicas=1))
    changed = refused(jobs, "fixed", {"spec": {"managedBy": "example.com/another"}})
    assert "spec.managedBy: Invalid value" in changed and "managedBy is immutable" in changed, changed
    removed = refused(jobs, "fixed", {"spec": {"managedBy": None}})
    assert "managedBy cannot be added or removed after creation" in removed, removed
    added = refused(jobs, "plain", {"spec": {"managedBy": OTHER}})
    assert "managedBy cannot be added or removed after creation" in added, added
    assert jobs.get("fixed")["spec"]["managedBy"] == OTHER


def test_managed_by_must_be_a_domain_prefixed_path(jobs: JobClient) -> None:
    with pytest.raises(ApiException) as err:
        jobs.create(job_manifest("bad", replicas=1, managedBy="not a path"))
    assert err.value.status == 422 and "spec.managedBy" in str(err.value.body), err.value.body
