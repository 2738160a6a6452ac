"""Which node conditions and taints mark a node's GPUs unhealthy: the operator's settings (docs/health.md)."""

from __future__ import annotations

from collections.abc import Mapping

from phalanx.core.health import NodeSignals
from phalanx.core.settings import ConfigError

ENV_CONDITIONS = "PHALANX_UNHEALTHY_NODE_CONDITIONS"
ENV_TAINTS = "PHALANX_UNHEALTHY_NODE_TAINTS"


class NodeSignalsError(ConfigError):
    """The settings do not parse; the operator refuses to start (one line, exit 2)."""


def from_env(env: Mapping[str, str]) -> NodeSignals:
    """`Type=Status` pairs and taint keys, comma-separated; unset: the defaults, empty: none."""
    conditions = NodeSignals().conditions
    raw = env.get(ENV_CONDITIONS)
    if raw is not None:
        pairs = []
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            kind, sep, status = part.partition("=")
            if not sep or not kind.strip() or status.strip() not in ("True", "False", "Unknown"):
                raise NodeSignalsError(
                    f"{ENV_CONDITIONS}={raw!r}: {part!r} is not Type=Status with Status True, False or Unknown "
                    "(e.g. AcceleratedHardwareReady=False)"
                )
            pairs.append((kind.strip(), status.strip()))
        conditions = tuple(pairs)
    taints = tuple(t.strip() for t in env.get(ENV_TAINTS, "").split(",") if t.strip())
    return NodeSignals(conditions=conditions, taints=taints)
