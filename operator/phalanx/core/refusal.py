"""Creates the apiserver refuses: why, in one CamelCase reason the job's status can carry.

Refusals are not errors of the operator: retrying the same create gets the same answer until the
user or an admin changes something, so the job says why (condition ReplicaFailure) and the operator
retries with a per-job backoff instead of every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

POD_SECURITY = "PodSecurityViolation"
QUOTA = "QuotaExceeded"
WEBHOOK = "WebhookDenied"
INVALID = "InvalidPodSpec"
FORBIDDEN = "CreateForbidden"
REFUSED = "CreateRefused"


@dataclass(frozen=True)
class CreateRefusal:
    """The last refused create of a job: what the status says until a create succeeds."""

    reason: str
    message: str


def classify(code: int | None, message: str) -> str:
    """The reason for an apiserver refusal (`code` the HTTP status; None: the client refused it)."""
    if code is None:
        return INVALID  # the client's own validation: the manifest does not fit the Pod schema
    if "violates PodSecurity" in message:
        return POD_SECURITY
    if "exceeded quota" in message or "must specify limits" in message or "must specify requests" in message:
        return QUOTA
    if "admission webhook" in message and "denied the request" in message:
        return WEBHOOK
    if code in (400, 422):
        return INVALID
    if code == 403:
        return FORBIDDEN
    return REFUSED


def is_refusal(code: int | None) -> bool:
    """A verdict on the object (retrying soon gets the same answer), not a transient failure of the API.

    409 is no refusal (AlreadyExists is success for an idempotent create); 429 and 5xx are transient."""
    return code is None or (400 <= code < 500 and code not in (409, 429))
