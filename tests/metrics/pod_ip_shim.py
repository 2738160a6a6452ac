"""Runs the reference PyTorch trainer as if in its own pod network namespace: its metrics server binds
$POD_IP (a 127.0.0.x address) instead of 0.0.0.0, so several "pods" share one port on one host, as
pods with their own IPs do. Everything else is the unmodified example.

    POD_IP=127.0.0.2 python tests/metrics/pod_ip_shim.py --steps 1000 ...
"""

from __future__ import annotations

import os
import runpy
import sys

from phalanx_trainer import metrics

_serve = metrics.TrainerMetrics.serve


def _serve_on_pod_ip(self: metrics.TrainerMetrics, port: int, addr: str = "0.0.0.0") -> None:
    _serve(self, port, addr=os.environ["POD_IP"])


metrics.TrainerMetrics.serve = _serve_on_pod_ip  # type: ignore[method-assign]
sys.argv = ["phalanx_trainer.examples.pytorch_ddp", *sys.argv[1:]]
runpy.run_module("phalanx_trainer.examples.pytorch_ddp", run_name="__main__")
