"""`kubectl phalanx top`: every job with its samples/s, efficiency, goodput and GPUs, sorted.

One list call: everything shown is the status the operator already wrote (status.throughput).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from phalanx.cli import render
from phalanx.cli.cluster import Body
from phalanx.core.observe import job_view

# --sort-by KEY: the row field it sorts on; numbers sort biggest first, names alphabetically.
SORT_KEYS = {
    "samples": "samplesPerSecond",
    "efficiency": "scalingEfficiency",
    "goodput": "goodput",
    "gpus": "gpus",
    "name": "name",
}


def row(body: Body, now: datetime) -> dict[str, Any]:
    job = job_view(body)
    s, t = job.status, job.status.throughput
    return {
        "namespace": job.namespace,
        "name": job.name,
        "state": s.state or "Pending",
        "replicas": s.ready_summary,
        "worldSize": s.world_size,
        "samplesPerSecond": t.samples_per_second if t else None,
        "scalingEfficiency": t.scaling_efficiency if t else None,
        "goodput": t.goodput if t else None,
        "gpus": s.gpus or 0,
        "restarts": s.restarts,
        "ageSeconds": max((now - job.created).total_seconds(), 0.0),
    }


def rows(bodies: Sequence[Body], now: datetime, sort_by: str = "samples") -> list[dict[str, Any]]:
    key = SORT_KEYS[sort_by]
    out = [row(b, now) for b in bodies]
    if key == "name":
        return sorted(out, key=lambda r: (r["namespace"], r["name"]))
    # Biggest first; jobs with no number yet last, by name.
    return sorted(out, key=lambda r: (r[key] is None, -(r[key] or 0), r["namespace"], r["name"]))


def text(table_rows: Sequence[dict[str, Any]], all_namespaces: bool) -> str:
    headers = ["NAME", "STATE", "REPLICAS", "SAMPLES/S", "EFFICIENCY", "GOODPUT", "GPUS", "RESTARTS", "AGE"]
    cells = [
        [
            r["name"],
            r["state"],
            r["replicas"] or render.NONE,
            render.rate(r["samplesPerSecond"]),
            render.fraction(r["scalingEfficiency"], 3),
            render.fraction(r["goodput"]),
            str(r["gpus"]),
            str(r["restarts"]),
            render.age(r["ageSeconds"]),
        ]
        for r in table_rows
    ]
    if all_namespaces:
        headers = ["NAMESPACE", *headers]
        cells = [[r["namespace"], *c] for r, c in zip(table_rows, cells, strict=True)]
    return render.table(headers, cells) + "\n"
