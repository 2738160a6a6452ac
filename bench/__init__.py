"""The phalanx benchmark suite: `python -m bench` (or `make bench`). See docs/benchmarks.md.

Scenarios run against the local control plane (scale profile) and compare three subjects on the same
cluster in the same run: phalanx, the limit baseline (a minimal client creating the same objects) and
Kubeflow's training operator v1 (PyTorchJob) where it can be built.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The operator (phalanx) and the local control plane (localcluster) live outside the installed paths.
for _p in (REPO / "operator", REPO / "dev"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
