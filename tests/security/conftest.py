"""Fixtures for running the operator with the chart's ServiceAccount and nothing else.

chart_install (module): the chart installed with default values into a namespace enforcing Pod Security
restricted. chart_operator: `python -m phalanx.controller` as a subprocess whose only credential is a
TokenRequest token of that ServiceAccount (no client certificate, no impersonation), so every API call
it makes is authorised by the chart's RBAC alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.helm.release import RESTRICTED, SERVICE_ACCOUNT, installed, service_account_kubeconfig
from tests.plugins.operator import OperatorProcess


@pytest.fixture(scope="module")
def chart_install(kubeconfig: Path, core_v1: client.CoreV1Api) -> Iterator[str]:
    """The release namespace of a default install."""
    with installed(kubeconfig, core_v1, "rbac-chart", labels=RESTRICTED) as (_, namespace):
        yield namespace


@pytest.fixture
def chart_operator(
    chart_install: str,
    kubeconfig: Path,
    core_v1: client.CoreV1Api,
    operator_process: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> OperatorProcess:
    as_operator = service_account_kubeconfig(
        kubeconfig, core_v1, chart_install, SERVICE_ACCOUNT, tmp_path / "sa.kubeconfig"
    )
    # The chart's Role grants Leases in the release namespace only: the operator's own namespace in a pod.
    return operator_process(kubeconfig_path=as_operator, env={"PHALANX_LEASE_NAMESPACE": chart_install})
