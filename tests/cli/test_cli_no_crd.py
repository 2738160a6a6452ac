"""A cluster without the TrainingJob CRD: every subcommand that reads jobs says so in one line.

The real apiserver with the CRD deleted for the length of the test (no operator runs in this module)
and applied again after it, Established, as the session's `crd` fixture left it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli.runner import cli

MISSING = (
    "error: the TrainingJob CRD (trainingjobs.phalanx.dev) is not installed in this cluster: "
    "kubectl apply -f crds/ (or install the Helm chart)\n"
)


def test_missing_crd_is_one_line_for_every_subcommand(
    crd: Path, kubectl: Any, kubeconfig: Path, tmp_path: Path
) -> None:
    kubectl("delete", "crd", "trainingjobs.phalanx.dev", "--wait=true", "--timeout=120s")
    try:
        for args in (
            ["status", "j"],
            ["top"],
            ["top", "-A"],
            ["logs", "j"],
            ["logs", "j", "-f"],
            ["plot", "j", "-o", str(tmp_path / "x.png")],
        ):
            res = cli(*args, kubeconfig=kubeconfig, namespace="default")
            assert (res.returncode, res.stdout, res.stderr) == (1, "", MISSING), args
    finally:
        kubectl.apply_crd(crd)
