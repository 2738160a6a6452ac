"""Checkpoint storage decisions before any pod exists."""

from __future__ import annotations

from phalanx.core.gang import Gang
from phalanx.core.storage import ClaimView, build_claim, check
from tests.unit.specs import NS, spec


def gang(replicas: int = 2, **ckpt: object) -> Gang:
    return Gang("j", NS, "uid", spec(replicas=replicas, checkpoint=ckpt), 1)


def test_no_checkpoint_or_object_store_needs_no_claim() -> None:
    assert check(Gang("j", NS, "u", spec(), 1), {}).problem is None
    assert check(gang(uri="gs://b/p"), {}).create == []


def test_missing_user_claim_is_a_problem_naming_it() -> None:
    result = check(gang(claimName="mine"), {})
    assert result.problem is not None and "mine does not exist" in result.problem and not result.create


def test_read_write_once_claim_with_several_pods_is_refused_but_fine_for_one() -> None:
    rwo = {"mine": ClaimView("mine", ("ReadWriteOnce",), "Bound")}
    problem = check(gang(replicas=4, claimName="mine"), rwo).problem
    assert problem is not None and "ReadWriteOnce" in problem and "4 pods" in problem
    assert check(gang(replicas=1, claimName="mine"), rwo).problem is None


def test_provisioned_claim_is_created_once_then_used() -> None:
    g = gang(storage={"size": "100Gi", "storageClassName": "nfs"})
    first = check(g, {})
    assert [m["metadata"]["name"] for m in first.create] == ["j-checkpoints"] and first.waiting
    pvc = first.create[0]
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "100Gi"}},
        "storageClassName": "nfs",
    }
    assert "ownerReferences" not in pvc["metadata"]  # Retain by default: it outlives the job
    assert pvc["metadata"]["labels"]["phalanx.dev/job-name"] == "j"
    then = check(g, {"j-checkpoints": ClaimView("j-checkpoints", ("ReadWriteMany",), "Bound")})
    assert then.create == [] and then.problem is None and then.waiting is None


def test_retain_policy_delete_owns_the_claim() -> None:
    pvc = build_claim(gang(storage={"size": "1Gi"}, retainPolicy="Delete"))
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
