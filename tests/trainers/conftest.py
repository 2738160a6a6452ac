"""Fixtures of the trainer tests; the process helpers live in harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.trainers.harness import Job


@pytest.fixture
def cleanup() -> Iterator[list[Job]]:
    """Jobs appended here are SIGKILLed at teardown, so a failing test leaves no trainers behind."""
    jobs: list[Job] = []
    yield jobs
    for job in jobs:
        job.kill()
