"""`make demo`'s story, run as the README's command runs it (python -m demo, its own cluster): a
1-pod baseline, a rescale to 2, a SIGKILLed rank, a gang restart resuming from a checkpoint, and
Succeeded with a measured efficiency; and a dead operator stops the demo with its last log lines.

The default demo runs in real containers on the real node (marker realnode: the trainer image is built
by `make images`). The real node is one per machine, so that run starts its cluster before the
realnode session's own (pytest runs tests/e2e before tests/realnode, and the session cluster starts
with the first test that asks for it). NODE=process runs the same story on the process node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def run_demo(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(str(REPO / d) for d in ("dev", "operator", "trainers", "."))
    return subprocess.run(
        [sys.executable, "-m", "demo", *args],
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.parametrize("node", [pytest.param("real", marks=pytest.mark.realnode), "process"])
def test_demo_tells_the_story(node: str) -> None:
    res = run_demo(*(["--node", node] if node != "real" else []))  # real: the default, as `make demo` runs
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-2000:]
    steps = [int(m) for m in re.findall(r"\] ([1-5])/5 ", out)]
    assert steps == [1, 2, 3, 4, 5], out
    baseline = re.search(r"2/5 baseline measured at 1 pod: X\(1\) = ([\d.]+) samples/s", out)
    assert baseline and float(baseline.group(1)) > 0, out
    # The kill came after the 2-pod gang had committed a checkpoint past where it resumed, and the
    # restart resumed from a checkpoint: the step is named and is past the rescale's.
    resumed = re.search(r"4/5 the whole gang restarted as attempt (\d+) and resumed from step (\d+)", out)
    scaled = re.search(r"from checkpoint step (\d+)", out)
    assert resumed and scaled, out
    assert int(resumed.group(1)) == 3 and int(resumed.group(2)) > int(scaled.group(1)), out
    final = re.search(r"5/5 mnist-ddp Succeeded after one rescale and 1 failure restart\(s\); scaling efficiency "
                      r"([\d.]+) at 2 pods against the 1-pod baseline, goodput ([\d.]+)", out)  # fmt: skip
    assert final and float(final.group(1)) > 0 and 0 < float(final.group(2)) <= 1, out
    # kubectl get tj and kubectl phalanx status show the same job.
    assert re.search(r"^mnist-ddp\s+Succeeded\s+pytorch\s+0/2\s+0\s+1\s+" + re.escape(final.group(1)), out, re.M), out
    assert re.search(r"^\s+3\s+GangRestart\s+.*pod mnist-ddp-\S*worker-1 exited with code 137", out, re.M), out
    assert re.search(r"^\s+2\s+Rescaling\s+.*replicas 1 -> 2", out, re.M), out
    assert "demo passed" in out


def test_demo_stops_at_once_when_the_operator_dies() -> None:
    # A bad operator setting: the operator exits 2 at start with one line naming it.
    res = run_demo("--node", "process", PHALANX_WORKERS="0")  # the operator's exit, whatever the node
    assert res.returncode == 1
    assert "the operator exited with code 2" in res.stdout, res.stdout
    assert "phalanx operator: bad setting: PHALANX_WORKERS=0 is outside 1..1024" in res.stdout, res.stdout
    assert "2/5" not in res.stdout  # it stopped there, instead of waiting for the job
    assert "demo FAILED" in res.stdout
