"""Entry point for `kopf run -m phalanx.controller.main`: the default registry gets our handlers."""

from __future__ import annotations

import os

import kopf

from phalanx.controller.handlers import build_registry
from phalanx.controller.operator import Operator

OPERATOR = Operator(workers=int(os.environ.get("PHALANX_WORKERS", "8")))
_registry = build_registry(OPERATOR, metrics_port=int(os.environ.get("PHALANX_METRICS_PORT", "8080")) or None)
kopf.set_default_registry(_registry)
