"""controller/caches.py's Caches is the one place that names kopf's indexes: the handlers declare them by
its constants and every reader goes through it."""

from __future__ import annotations

import re
from pathlib import Path

from phalanx.controller.caches import Caches

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "phalanx"


def test_no_module_but_caches_names_an_index() -> None:
    names = "|".join(re.escape(n) for n in Caches.NAMES)
    naming = {
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(rf"[\"']({names})[\"']", p.read_text())
    }
    assert naming == {"controller/caches.py"}


def test_an_index_kopf_has_not_filled_reads_as_empty() -> None:
    caches = Caches({Caches.JOBS: {("ns", "j"): [{"metadata": {"name": "j"}}]}})
    assert caches.jobs() == [(("ns", "j"), {"metadata": {"name": "j"}})]
    assert (caches.nodes(), caches.usage(), caches.pods_of(("ns", "j"), "u")) == ([], [], [])
    assert caches.priority("high") is None and not caches.service_exists(("ns", "j"))
