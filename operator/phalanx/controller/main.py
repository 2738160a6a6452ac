"""Entry point for `kopf run -m phalanx.controller.main`: the default registry gets our handlers, wired
with the settings read once from the environment (controller/settings.py)."""

from __future__ import annotations

import kopf

from phalanx.controller import settings
from phalanx.controller.handlers import build_registry
from phalanx.controller.operator import Operator

SETTINGS = settings.read()
OPERATOR = Operator(SETTINGS)
kopf.set_default_registry(build_registry(OPERATOR, metrics_port=SETTINGS.metrics_port))
