"""The operator refuses a bad setting at start with one line naming it, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx.core.settings import ConfigError, env_int, env_number

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("PHALANX_WORKERS=0", "PHALANX_WORKERS=0 is outside 1..1024"),
        ("PHALANX_WORKERS=2.5", "PHALANX_WORKERS=2.5 is not a whole number"),
        ("PHALANX_OPERATOR_METRICS_PORT=http", "PHALANX_OPERATOR_METRICS_PORT='http' is not a number"),
        (
            "PHALANX_METRICS_PORT=8080",
            "PHALANX_METRICS_PORT is the trainer runtime's metrics port; the operator's is "
            "PHALANX_OPERATOR_METRICS_PORT: rename it",
        ),
        ("PHALANX_API_CONCURRENCY=100000", "PHALANX_API_CONCURRENCY=100000 is outside 1..1024"),
        ("PHALANX_SCRAPE_INTERVAL_SECONDS=soon", "PHALANX_SCRAPE_INTERVAL_SECONDS='soon' is not a number"),
    ],
)
def test_a_bad_setting_stops_the_operator_with_one_line(setting: str, message: str) -> None:
    name, value = setting.split("=", 1)
    res = subprocess.run(
        [sys.executable, "-m", "phalanx.controller"],
        env={**os.environ, "PYTHONPATH": str(REPO / "operator"), "KUBECONFIG": "/nonexistent", name: value},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (res.returncode, res.stderr) == (2, f"phalanx operator: bad setting: {message}\n")


def test_env_numbers() -> None:
    assert env_number({}, "X", 1.5, 0, 2) == 1.5
    assert env_number({"X": ""}, "X", 1.5, 0, 2) == 1.5
    assert env_int({"X": "7"}, "X", 1, 0, 10) == 7
    with pytest.raises(ConfigError, match=r"X=11 is outside 0\.\.10"):
        env_int({"X": "11"}, "X", 1, 0, 10)


def test_the_settings_are_read_into_one_object_that_wires_the_operator() -> None:
    from phalanx.controller import settings
    from phalanx.controller.operator import Operator

    s = settings.from_env({
        "PHALANX_WORKERS": "3", "PHALANX_WATCH_NAMESPACE": "ml", "PHALANX_SCRAPE_TIMEOUT_SECONDS": "1.5",
        "PHALANX_OPERATOR_METRICS_PORT": "0", "PHALANX_LEADER_ELECTION": "false",
    })  # fmt: skip
    assert (s.workers, s.watch_namespace, s.metrics_port, s.lease.enabled) == (3, "ml", None, False)
    op = Operator(s)
    assert (op.workers, op.watch_namespace, op.scraper.settings.timeout_s, op.election.enabled) == (3, "ml", 1.5, False)


def test_only_the_settings_module_reads_the_environment() -> None:
    # KUBECONFIG is the kubernetes client's own variable, read where the client is configured.
    readers = {
        str(p.relative_to(REPO))
        for d in ("core", "controller")
        for p in (REPO / "operator" / "phalanx" / d).rglob("*.py")
        if "os.environ" in p.read_text() or "getenv" in p.read_text()
    }
    assert readers == {"operator/phalanx/controller/settings.py", "operator/phalanx/controller/kube.py"}
