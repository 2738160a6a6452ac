"""Output in kubectl's habits: aligned tables with upper-case headers, short ages, `-o json|yaml`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

FORMATS = ("json", "yaml")
NONE = "-"  # kubectl's placeholder for a value that is not there (yet)


def age(seconds: float | None) -> str:
    """kubectl's short duration: 42s, 5m3s under 10 minutes, 2h5m, 3d4h."""
    if seconds is None:
        return NONE
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m" if s % 3600 // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{s % 86400 // 3600}h" if s % 86400 // 3600 else f"{s // 86400}d"


def rate(value: float | None) -> str:
    """samples/s with the 3 significant digits the status keeps (1230, 61.5, 0.25)."""
    if value is None:
        return NONE
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fraction(value: float | None, digits: int = 2) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        indent + "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def dump(value: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2) + "\n"
    return yaml.safe_dump(value, sort_keys=False, width=120)
