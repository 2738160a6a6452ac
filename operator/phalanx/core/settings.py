"""Settings from the environment (the operator's, its lease's, the scraper's): each checked at start, so
a bad one stops the operator with one line naming the variable instead of a traceback mid-run."""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """A setting is wrong; the operator refuses to start."""


def env_number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """The number in `env[name]` (`default` when unset or empty), which must lie in low..high."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw} is outside {low:g}..{high:g}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """`env_number` for a whole number."""
    value = env_number(env, name, default, low, high)
    if value != int(value):
        raise ConfigError(f"{name}={env[name]} is not a whole number")
    return int(value)
