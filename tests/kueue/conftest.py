"""Fixtures of the Kueue tests: ready_timeout (the session Kueue's waitForPodsReady timeout, seconds)."""

from __future__ import annotations

import pytest

from localcluster import kueue
from tests.conftest import TestCluster


@pytest.fixture
def ready_timeout(cluster: TestCluster) -> float:
    """Seconds of the session Kueue's waitForPodsReady timeout (dev/localcluster/kueue.py)."""
    return kueue.pods_ready_timeout_of(cluster.info.dir if cluster.info else cluster.kubeconfig.parent)
