"""Who reconciles a TrainingJob: spec.managedBy, read at the reconcile entry (as Kubernetes Jobs do).

- unset or phalanx.dev/trainingjob-controller: phalanx, in full;
- kueue.x-k8s.io/multikueue: Kueue's MultiKueue on a manager cluster. phalanx makes only the job's Kueue
  Workload (<job>-a1), which Kueue dispatches to a worker cluster together with a copy of the job (the copy
  has no managedBy, so the worker's phalanx runs it); MultiKueue writes the status here;
- anything else: another controller. phalanx creates nothing and writes no status.

Pure: the job's body in, a Role out.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

CONTROLLER = "phalanx.dev/trainingjob-controller"
MULTIKUEUE = "kueue.x-k8s.io/multikueue"


class Role(Enum):
    RECONCILE = "reconcile"  # phalanx's job: pods, status, everything
    DISPATCH = "dispatch"  # MultiKueue's: the Kueue Workload only, no pods, no status
    FOREIGN = "foreign"  # another controller's: nothing at all


def managed_by(body: Mapping[str, Any]) -> str | None:
    value = (body.get("spec") or {}).get("managedBy")
    return str(value) if value else None


def role(body: Mapping[str, Any]) -> Role:
    value = managed_by(body)
    if value is None or value == CONTROLLER:
        return Role.RECONCILE
    if value == MULTIKUEUE:
        return Role.DISPATCH
    return Role.FOREIGN
