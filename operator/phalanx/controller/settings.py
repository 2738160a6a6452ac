"""Every PHALANX_* setting of the operator, read from the environment and checked here, once, at start
(controller/main.py): a bad value stops the operator with one line naming the variable (exit 2).

The parsers of each group live with what they configure (the lease's in core/lease.py, the scraper's
in controller/scraper.py, the node signals' in controller/node_signals.py); only this module reads
the environment.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from phalanx import contract
from phalanx.controller import node_signals
from phalanx.controller.scraper import ScrapeSettings
from phalanx.core.health import NodeSignals
from phalanx.core.lease import LeaseSettings
from phalanx.core.settings import ConfigError, env_int

WORKERS = "PHALANX_WORKERS"
API_CONCURRENCY = "PHALANX_API_CONCURRENCY"
# The operator's own metrics port. PHALANX_METRICS_PORT is the trainer runtime's (phalanx.contract).
OPERATOR_METRICS_PORT = "PHALANX_OPERATOR_METRICS_PORT"
WATCH_NAMESPACE = "PHALANX_WATCH_NAMESPACE"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True)
class Settings:
    workers: int = 8
    api_concurrency: int = 16  # client-side concurrency of API calls (the python client has no QPS limiter)
    metrics_port: int | None = 8080  # None: no metrics server
    watch_namespace: str | None = None  # None: all namespaces
    lease: LeaseSettings = field(default_factory=lambda: lease_settings({}))
    scrape: ScrapeSettings = field(default_factory=lambda: ScrapeSettings.from_env({}))
    node_signals: NodeSignals = field(default_factory=NodeSignals)


def from_env(env: Mapping[str, str]) -> Settings:
    if contract.METRICS_PORT in env:
        raise ConfigError(
            f"{contract.METRICS_PORT} is the trainer runtime's metrics port; the operator's is "
            f"{OPERATOR_METRICS_PORT}: rename it"
        )
    return Settings(
        workers=env_int(env, WORKERS, Settings.workers, 1, 1024),
        api_concurrency=env_int(env, API_CONCURRENCY, Settings.api_concurrency, 1, 1024),
        metrics_port=env_int(env, OPERATOR_METRICS_PORT, 8080, 0, 65535) or None,
        watch_namespace=env.get(WATCH_NAMESPACE) or None,
        lease=lease_settings(env),
        scrape=ScrapeSettings.from_env(env),
        node_signals=node_signals.from_env(env),
    )


def lease_settings(env: Mapping[str, str]) -> LeaseSettings:
    settings = LeaseSettings.from_env(env, default_namespace=_own_namespace())
    if settings.identity:
        return settings
    # Outside a pod: unique per process, so two operators on one machine contend like two pods.
    return replace(settings, identity=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _own_namespace() -> str:
    """In a pod: its own namespace (the chart's Role grants Leases there only); else `default`."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def read() -> Settings:
    """The process's settings: the one place the operator reads its environment."""
    return from_env(os.environ)
