"""Leader election decisions (phalanx.core.lease): who may take the Lease, when, and when to stop acting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from phalanx.core.lease import (
    Action,
    LeaseRecord,
    LeaseSettings,
    decide,
    leading,
    released,
)
from phalanx.core.settings import ConfigError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EARLIER = datetime(2025, 12, 31, tzinfo=UTC)
S = LeaseSettings(lease_duration=15, renew_deadline=10, retry_period=1)


def held(by: str | None, duration: int = 15, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(by, duration, EARLIER, EARLIER, transitions)


@pytest.mark.parametrize(
    ("current", "unchanged_for", "action", "holder", "transitions", "acquired_now"),
    [
        # no Lease yet: create it, ours
        (None, 0.0, Action.CREATE, "me", 0, True),
        # ours: renew, keeping when we acquired it
        (held("me"), 0.5, Action.UPDATE, "me", 3, False),
        (held("me"), 100.0, Action.UPDATE, "me", 3, False),
        # another's that we saw renewed less than its duration ago: wait
        (held("other"), 0.0, Action.WAIT, None, None, None),
        (held("other"), 14.9, Action.WAIT, None, None, None),
        # another's, unchanged for its whole duration: it died; take over
        (held("other"), 15.0, Action.UPDATE, "me", 4, True),
        # the duration is the record's (the holder's setting), not ours
        (held("other", duration=30), 20.0, Action.WAIT, None, None, None),
        (held("other", duration=30), 30.0, Action.UPDATE, "me", 4, True),
        # released on shutdown (no holder): take over at once
        (held(None, duration=1), 0.0, Action.UPDATE, "me", 4, True),
        (held("", duration=1), 0.0, Action.UPDATE, "me", 4, True),
    ],
)
def test_decide(
    current: LeaseRecord | None,
    unchanged_for: float,
    action: Action,
    holder: str | None,
    transitions: int | None,
    acquired_now: bool | None,
) -> None:
    d = decide("me", current, unchanged_for, NOW, S)
    assert d.action is action
    if action is Action.WAIT:
        assert d.record is None and not d.acquiring
        return
    assert d.record is not None and d.acquiring
    assert d.record.holder == holder and d.record.transitions == transitions
    assert d.record.renew_time == NOW and d.record.duration_seconds == 15
    assert (d.record.acquire_time == NOW) is acquired_now


def test_a_fractional_duration_is_written_rounded_up_never_shorter() -> None:
    s = LeaseSettings(lease_duration=2.5, renew_deadline=2, retry_period=0.5)
    d = decide("me", None, 0.0, NOW, s)
    assert d.record is not None and d.record.duration_seconds == 3


@pytest.mark.parametrize(
    ("renewed_at", "now", "expected"),
    [(None, 0.0, False), (100.0, 100.0, True), (100.0, 109.9, True), (100.0, 110.0, False), (100.0, 500.0, False)],
)
def test_leading_lapses_at_the_renew_deadline(renewed_at: float | None, now: float, expected: bool) -> None:
    assert leading(renewed_at, now, S) is expected


def test_a_leader_stops_acting_before_any_standby_may_take_over() -> None:
    # The leader measures from just before its write; a standby sees the write at that time or later.
    write_sent = 100.0
    standby_saw_it = write_sent
    first_takeover = next(
        t / 10 for t in range(1000, 2000) if decide("b", held("a"), t / 10 - standby_saw_it, NOW, S).acquiring
    )
    last_action = max(t / 10 for t in range(1000, 2000) if leading(write_sent, t / 10, S))
    assert last_action < first_takeover


@pytest.mark.parametrize(
    ("current", "expected_holder"),
    [(held("me"), None), (held("other"), "untouched"), (None, "untouched")],
)
def test_release_only_what_is_ours(current: LeaseRecord | None, expected_holder: str | None) -> None:
    record = released("me", current, NOW)
    if expected_holder == "untouched":
        assert record is None
        return
    assert record is not None and record.holder is None and record.duration_seconds == 1 and record.renew_time == NOW
    assert decide("standby", record, 0.0, NOW, S).acquiring  # the standby takes it at its next look


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PHALANX_LEASE_DURATION_SECONDS": "abc"}, "PHALANX_LEASE_DURATION_SECONDS='abc' is not a number"),
        ({"PHALANX_LEASE_RETRY_PERIOD_SECONDS": "0"}, "PHALANX_LEASE_RETRY_PERIOD_SECONDS=0 must be greater than 0"),
        ({"PHALANX_LEASE_DURATION_SECONDS": "5"}, "PHALANX_LEASE_DURATION_SECONDS=5 must be greater than"),
        ({"PHALANX_LEASE_RENEW_DEADLINE_SECONDS": "1"}, "PHALANX_LEASE_RENEW_DEADLINE_SECONDS=1 must be greater than"),
        ({"PHALANX_LEADER_ELECTION": "maybe"}, "PHALANX_LEADER_ELECTION='maybe' is not true or false"),
        ({"PHALANX_LEASE_NAME": "Bad_Name"}, "PHALANX_LEASE_NAME='Bad_Name' is not a valid object name"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        LeaseSettings.from_env(env)


def test_settings_from_env() -> None:
    s = LeaseSettings.from_env(
        {
            "PHALANX_LEASE_DURATION_SECONDS": "4",
            "PHALANX_LEASE_RENEW_DEADLINE_SECONDS": "3",
            "PHALANX_LEASE_RETRY_PERIOD_SECONDS": "0.5",
            "PHALANX_LEASE_NAME": "ha-test",
            "PHALANX_POD_NAME": "phalanx-abc",
        },
        default_namespace="phalanx-system",
    )
    assert (s.lease_duration, s.renew_deadline, s.retry_period) == (4, 3, 0.5)
    assert (s.name, s.namespace, s.identity, s.enabled) == ("ha-test", "phalanx-system", "phalanx-abc", True)
    assert LeaseSettings.from_env({}).lease_duration == 15
    assert not LeaseSettings.from_env({"PHALANX_LEADER_ELECTION": "false"}).enabled
