"""Session-wide fixtures for tests that need the real local control plane (marker `cluster`).

Fixtures: cluster (session; a TestCluster), kubeconfig (Path), api_client (kubernetes ApiClient),
core_v1 (CoreV1Api), namespace (function; a fresh namespace name) and kubectl (a localcluster.testing.Kubectl).
The control plane starts once per run into a temp dir and stops at the end, with the `real` profile (a
real node, dev/localcluster/realnode.py) when a selected test is marked realnode; set PHALANX_TEST_KUBECONFIG
to the kubeconfig of a running cluster (e.g. `make cluster`'s .cluster/kubeconfig) to reuse it instead.
Real Kueue (dev/localcluster/kueue.py) runs next to it when a selected test is marked kueue.
Missing binaries FAIL these tests (CI runs them always): run `make binaries`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# localcluster lives in dev/; make the fixtures work whatever PYTHONPATH the runner was given.
_DEV = str(Path(__file__).resolve().parents[1] / "dev")
if _DEV not in sys.path:
    sys.path.insert(0, _DEV)

from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

import localcluster  # noqa: E402
from localcluster.testing import Kubectl, create_namespace, unique_namespace_name  # noqa: E402

pytest_plugins = ["tests.plugins.operator"]

REUSE_ENV = "PHALANX_TEST_KUBECONFIG"
CLUSTER_FIXTURES = {"cluster", "kubeconfig", "api_client", "core_v1", "namespace", "kubectl"}
log = logging.getLogger("localcluster")


@dataclass(frozen=True)
class TestCluster:
    kubeconfig: Path
    info: localcluster.ClusterInfo | None  # None when reusing a cluster via PHALANX_TEST_KUBECONFIG

    __test__ = False  # not a test class, despite the name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Any test that (even indirectly) uses the cluster gets the marker, so `-m "not cluster"` is exact.
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def session_profile(session: pytest.Session) -> str:
    """The `real` profile (a real node next to the kwok ones) when a selected test is marked realnode."""
    return "real" if any(item.get_closest_marker("realnode") for item in session.items) else "default"


def wants_kueue(session: pytest.Session) -> bool:
    """Kueue runs next to the session's cluster when a selected test is marked kueue."""
    return any(item.get_closest_marker("kueue") for item in session.items)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[TestCluster]:
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        path = Path(reuse)
        if not path.is_file():
            pytest.fail(f"${REUSE_ENV}={reuse} is not a file; unset it or point it at a kubeconfig", pytrace=False)
        yield TestCluster(kubeconfig=path, info=None)
        return
    state_dir = tmp_path_factory.mktemp("cluster")
    try:
        info = localcluster.up(
            session_profile(request.session), state_dir, kueue=wants_kueue(request.session), die_with_parent=True,
            log=log.info,
        )  # fmt: skip
    except localcluster.ClusterError as e:
        # Never skip: CI must run these tests, so a missing prerequisite is a failure with the fix.
        pytest.fail(f"local control plane did not start: {e}", pytrace=False)
    try:
        yield TestCluster(kubeconfig=info.kubeconfig, info=info)
    finally:
        localcluster.down(state_dir, log=log.info)


@pytest.fixture(scope="session")
def kubeconfig(cluster: TestCluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def core_v1(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(core_v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (its default ServiceAccount exists); deleted after the test, without waiting."""
    name = create_namespace(core_v1, unique_namespace_name(request.node.name))
    yield name
    try:
        core_v1.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:  # the test may have deleted it itself
            raise


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)
