"""spec.managedBy (core/managedby.py): who reconciles a TrainingJob."""

from __future__ import annotations

import pytest

from phalanx.core import managedby
from phalanx.core.managedby import Role


@pytest.mark.parametrize(
    ("value", "role"),
    [
        (None, Role.RECONCILE),
        ("", Role.RECONCILE),
        ("phalanx.dev/trainingjob-controller", Role.RECONCILE),
        ("kueue.x-k8s.io/multikueue", Role.DISPATCH),
        ("example.com/other-controller", Role.FOREIGN),
    ],
)
def test_role_follows_managed_by(value: str | None, role: Role) -> None:
    spec = {} if value is None else {"managedBy": value}
    assert managedby.role({"spec": spec}) is role


def test_a_body_without_spec_is_phalanxs() -> None:
    assert managedby.role({}) is Role.RECONCILE
