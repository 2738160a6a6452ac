"""`kubectl phalanx plot JOB -o scaling.png`: samples/s and scaling efficiency per world size.

The points are the job's own history in status.throughput.sizes (the latest reading at each size it
ran at), plus a declared baseline X(1) when the spec has one. Efficiencies are recomputed against
the job's current baseline with the operator's formula (core.telemetry.efficiency), so every point
uses the same X(1). Fewer than two sizes is refused: one point draws a line that says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phalanx.cli.cluster import Body
from phalanx.cli.errors import CliError
from phalanx.core.observe import job_view
from phalanx.core.telemetry import efficiency

EXTRA = "plot"  # pyproject's optional dependency group that brings matplotlib
WIDTH_IN, HEIGHT_IN, DPI = 8.0, 4.5, 100  # 800 x 450 pixels


@dataclass(frozen=True)
class Point:
    replicas: int
    world_size: int
    samples_per_second: float
    efficiency: float | None
    declared: bool = False  # the spec's baselineSamplesPerSecond, not a measurement


def points(body: Body) -> list[Point]:
    """The plot's data, or a CliError saying why there is too little of it."""
    job = job_view(body)
    t = job.status.throughput
    name = f"{job.namespace}/{job.name}"
    if t is None or (not t.sizes and t.samples_per_second is None):
        raise CliError(
            f"job {name} has no throughput metrics yet (state {job.status.state or 'Pending'}): "
            "the operator records them while the job runs"
        )
    base = t.baseline_samples_per_second
    out = [
        Point(
            s.replicas,
            s.world_size,
            s.samples_per_second,
            efficiency(s.samples_per_second, s.replicas, base) if base else None,
        )
        for s in t.sizes
    ]
    declared = job.spec.metrics.baseline_samples_per_second if job.spec else None
    if declared is not None and all(p.replicas != 1 for p in out):
        procs = job.spec.effective_procs_per_pod() if job.spec else 1
        out.append(Point(1, procs, declared, 1.0, declared=True))
    out.sort(key=lambda p: p.replicas)
    if len(out) < 2:
        only = out[0] if out else None
        at = f" ({only.replicas} pods, world size {only.world_size})" if only else ""
        raise CliError(
            f"job {name} has throughput at one size only{at}: a scaling plot needs two or more. Run it at "
            "another size (kubectl scale tj/NAME --replicas=N) or declare spec.metrics.baselineSamplesPerSecond"
        )
    return out


def draw(data: list[Point], title: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: a file only
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError(f"plot needs matplotlib: pip install 'phalanx[{EXTRA}]' (or pip install matplotlib)") from None
    fig: Any
    fig, left = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    try:
        x = [p.world_size for p in data]
        left.plot(x, [p.samples_per_second for p in data], "o-", color="tab:blue", label="samples/s")
        for p in data:
            if p.declared:
                left.annotate(
                    "declared X(1)",
                    (p.world_size, p.samples_per_second),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize=8,
                    color="tab:blue",
                )
        left.set_xlabel("world size (training processes)")
        left.set_ylabel("samples/s", color="tab:blue")
        left.set_xticks(x)
        left.set_ylim(bottom=0)
        right = left.twinx()
        eff = [(p.world_size, p.efficiency) for p in data if p.efficiency is not None]
        if eff:
            right.plot([e[0] for e in eff], [e[1] for e in eff], "s--", color="tab:orange", label="efficiency")
            right.set_ylim(0, max(1.1, max(e[1] for e in eff) * 1.1))
        right.set_ylabel("scaling efficiency X(N) / (N X(1))", color="tab:orange")
        left.set_title(title)
        left.grid(alpha=0.3)
        fig.tight_layout()
        try:
            fig.savefig(path, dpi=DPI)
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
