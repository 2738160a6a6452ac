"""Entry point for `kopf run -m phalanx.controller.main`: the default registry gets our handlers."""

from __future__ import annotations

import os

import kopf

from phalanx.controller.handlers import build_registry
from phalanx.controller.operator import Operator
from phalanx.core.settings import env_int

OPERATOR = Operator(
    workers=env_int(os.environ, "PHALANX_WORKERS", 8, 1, 1024),
    # Client-side concurrency of API calls (the python client has no QPS limiter of its own).
    api_concurrency=env_int(os.environ, "PHALANX_API_CONCURRENCY", 16, 1, 1024),
)
_registry = build_registry(OPERATOR, metrics_port=env_int(os.environ, "PHALANX_METRICS_PORT", 8080, 0, 65535) or None)
kopf.set_default_registry(_registry)
