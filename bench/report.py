"""Aggregation (median and spread over repeats), ratios to the baselines, the printed table and JSON."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

SUBJECT_ORDER = ("baseline", "phalanx", "kubeflow")


def summarize(samples: list[float | None]) -> dict[str, Any] | None:
    values = [v for v in samples if v is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": [round(v, 4) for v in values],
    }


def aggregate(runs: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """runs: the per-repeat result dicts of one subject in one scenario row."""
    out: dict[str, Any] = {}
    for m in metrics:
        s = summarize([r.get(m) for r in runs])
        if s is not None:
            out[m] = s
    out["verified_ok"] = all((r.get("verified") or {}).get("ok", True) for r in runs)
    out["errors"] = sorted({e for r in runs for e in r.get("errors") or []})
    return out


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b.get("median"):
        return None
    return float(a["median"]) / float(b["median"])


def fmt(s: dict[str, Any] | None, unit: str = "s") -> str:
    if not s:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if s["n"] == 1:
        return f"{_num(med)}{unit}"
    return f"{_num(med)}{unit} [{_num(lo)}-{_num(hi)}]"


def _num(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(rows: list[dict[str, Any]], subjects: list[str]) -> str:
    """rows: {"scenario", "metric", "unit", subject: summary...}. Ratios: phalanx/baseline, phalanx/kubeflow."""
    head = ["scenario", "metric", *subjects]
    if "phalanx" in subjects and "baseline" in subjects:
        head.append("phalanx/baseline")
    if "phalanx" in subjects and "kubeflow" in subjects:
        head.append("phalanx/kubeflow")
    lines = [head]
    for row in rows:
        line = [row["scenario"], row["metric"], *(fmt(row.get(s), row.get("unit", "s")) for s in subjects)]
        if "phalanx/baseline" in head:
            line.append(_r(row.get("ratio_baseline")))
        if "phalanx/kubeflow" in head:
            line.append(_r(row.get("ratio_kubeflow")))
        lines.append(line)
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]], subjects: list[str]) -> str:
    text = table(rows, subjects).splitlines()
    del text[1]
    cells = [[c.strip() for c in _split(line)] for line in text]
    head = cells[0]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(md)


def _split(line: str) -> list[str]:
    import re

    return re.split(r"\s{2,}", line.strip())


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def main(argv: list[str]) -> int:
    """`python -m bench.report RESULT.json ...`: one markdown table of the rows of several runs."""
    rows: list[dict[str, Any]] = []
    subjects: list[str] = []
    for name in argv:
        data = json.loads(Path(name).read_text())
        rows += data["rows"]
        for s in SUBJECT_ORDER:
            if s not in subjects and any(s in r for r in data["rows"]):
                subjects.append(s)
    print(markdown(rows, [s for s in SUBJECT_ORDER if s in subjects]))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
