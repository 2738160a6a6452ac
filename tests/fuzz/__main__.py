"""`python -m tests.fuzz [--count N] [--seed S] [--kubeconfig PATH]`: fuzz against a local control plane.

Starts a control plane of its own (default profile, in a temp dir) unless --kubeconfig names a running
one, applies the CRD, runs the operator as a process with its log captured, and exits 1 on any defect.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from kubernetes import config

import localcluster
from localcluster.testing import Kubectl, create_namespace, unique_namespace_name
from tests.fuzz.run import run
from tests.plugins.operator import CRD, OperatorProcess


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="manifests (default: %(default)s)")
    p.add_argument("--seed", type=int, default=16, help="generator seed (default: %(default)s)")
    p.add_argument("--kubeconfig", type=Path, help="a running cluster instead of a fresh one")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    with tempfile.TemporaryDirectory(prefix="phalanx-fuzz-") as tmp:
        work = Path(tmp)
        kubeconfig = args.kubeconfig
        if kubeconfig is None:
            kubeconfig = localcluster.up("default", work / "cluster", die_with_parent=True).kubeconfig
        try:
            Kubectl(kubeconfig)("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
            Kubectl(kubeconfig)("wait", "--for=condition=Established", "crd/trainingjobs.phalanx.dev", "--timeout=60s")
            api = config.new_client_from_config(config_file=str(kubeconfig))
            from kubernetes import client

            ns = create_namespace(client.CoreV1Api(api), unique_namespace_name("fuzz"))
            operator = OperatorProcess(kubeconfig, work / "operator.log")
            try:
                report = run(api, ns, args.count, args.seed, operator.log_path)
            finally:
                operator.stop()
                # Also after a crash: jobs left behind would take a reused cluster's GPUs.
                client.CoreV1Api(api).delete_namespace(ns)
            print(report.summary())
            if not report.ok:
                keep = Path(tempfile.gettempdir()) / f"phalanx-fuzz-operator-{os.getpid()}.log"
                keep.write_bytes(operator.log_path.read_bytes())
                print(f"the operator's log: {keep}")
        finally:
            if args.kubeconfig is None:
                localcluster.down(work / "cluster")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
