"""Reading pods and TrainingJobs (as plain dicts from the API) into the core's views."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from phalanx.api.models import TrainingJobSpec, TrainingJobStatus
from phalanx.core import names
from phalanx.core.model import JobView, PodView


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time; None when absent or unreadable (the CRD's date-time format keeps junk out of
    status, but a reconcile must not fail on one either)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def seconds_left(since: datetime, limit: float, now: datetime) -> float:
    """Seconds until `limit` seconds after `since` have passed (negative once they have).

    Elapsed time is compared with the limit instead of adding the limit to a date: any limit the CRD
    accepts (up to int32 seconds) and any date in status then work, where `since + timedelta(limit)`
    overflows near year 9999 or for a huge limit."""
    return limit - (now - since).total_seconds()


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def devices_of(status: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """(resource, device ID, health) of every device allocated to the pod's containers, as the kubelet
    reports them (ResourceHealthStatus, beta and on by default since Kubernetes 1.36)."""
    found = []
    for c in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        for entry in c.get("allocatedResourcesStatus") or []:
            for device in entry.get("resources") or []:
                found.append(
                    (str(entry.get("name", "")), str(device.get("resourceID", "")), str(device.get("health", "")))
                )
    return tuple(found)


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    trainer = next(
        (c for c in status.get("containerStatuses") or [] if c.get("name") == names.TRAINER_CONTAINER),
        None,
    ) or next(iter(status.get("containerStatuses") or []), None)
    state = (trainer or {}).get("state") or {}
    terminated = state.get("terminated")
    waiting = state.get("waiting")
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = (
        scheduled.get("message") or "Unschedulable"
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None
    )
    disruption = conditions.get("DisruptionTarget", {})
    phase = status.get("phase") or "Pending"
    reason = (terminated or {}).get("reason") or status.get("reason")
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        index=_int(labels.get(names.LABEL_INDEX), -1),
        attempt=_int(labels.get(names.LABEL_ATTEMPT), 0),
        phase=phase,
        ready=conditions.get("Ready", {}).get("status") == "True",
        gated=bool(spec.get("schedulingGates")),
        node=spec.get("nodeName"),
        terminating=bool(meta.get("deletionTimestamp")),
        exit_code=terminated.get("exitCode") if terminated else None,
        reason=reason,
        # A waiting container's message says why it cannot start (runAsNonRoot with a root image, a
        # missing Secret, an image that cannot be pulled): the job's status quotes it.
        message=(terminated or {}).get("message") or (waiting or {}).get("message") or status.get("message"),
        disrupted=disruption.get("status") == "True" or status.get("reason") == "Evicted",
        waiting_reason=(waiting or {}).get("reason"),
        unschedulable=unschedulable,
        replicas=_int((meta.get("annotations") or {}).get(names.ANNOTATION_REPLICAS), 0) or None,
        ip=status.get("podIP"),
        finished_at=(terminated or {}).get("finishedAt"),
        devices=devices_of(status),
        started_at=(state.get("running") or terminated or {}).get("startedAt"),
    )


def foreign_status(meta: Mapping[str, Any]) -> frozenset[str]:
    """The status fields the operator relies on whose value another field manager set (kubectl patch
    --subresource=status, a script): "attempt" and "condition/<Type>". A writer that changes a field
    becomes its owner in metadata.managedFields, so this names the last writer of each value."""
    found: set[str] = set()
    for entry in meta.get("managedFields") or []:
        if entry.get("subresource") != "status" or entry.get("manager") == names.FIELD_MANAGER:
            continue
        fields = ((entry.get("fieldsV1") or {}).get("f:status")) or {}
        if "f:attempt" in fields:
            found.add("attempt")
        for key, owned in (fields.get("f:conditions") or {}).items():
            if not key.startswith("k:") or "f:status" not in (owned or {}):
                continue
            try:
                type_ = json.loads(key[2:]).get("type")
            except (ValueError, AttributeError):
                continue
            if isinstance(type_, str):
                found.add(f"condition/{type_}")
    return frozenset(found)


def job_view(body: Mapping[str, Any], priority: int = 0) -> JobView:
    meta = body.get("metadata", {})
    spec: TrainingJobSpec | None = None
    error: str | None = None
    try:
        spec = TrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        error = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
    status = TrainingJobStatus.model_validate(body.get("status") or {})
    return JobView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        generation=_int(meta.get("generation"), 1),
        created=parse_time(meta.get("creationTimestamp")) or datetime.now(UTC),
        spec=spec,
        spec_error=error,
        status=status,
        priority=priority,
        deleting=bool(meta.get("deletionTimestamp")),
        foreign_status=foreign_status(meta),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
    )
