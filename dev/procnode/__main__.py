"""python -m procnode --kubeconfig FILE [--name NAME] [--state-dir DIR] [--cpu N] [--memory Q] [--gpus N]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from procnode.host import HostError, require_tools
from procnode.kube import KubeClient
from procnode.node import NodeConfig, ProcessNode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m procnode",
        description="A test node that runs the pods bound to it as local processes (docs/e2e.md). Needs root.",
    )
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--name", default="procnode", help="Node name (default: procnode)")
    p.add_argument("--state-dir", type=Path, default=Path(".procnode"), help="pod dirs, logs, claims")
    p.add_argument("--cpu", default="8", help="declared CPU capacity (for the scheduler only)")
    p.add_argument("--memory", default="16Gi", help="declared memory capacity (not enforced)")
    p.add_argument("--gpus", type=int, default=0, help="declared nvidia.com/gpu capacity (fake: no devices)")
    p.add_argument("--pod-cidr", default="127.0.0.0/16", help="pod addresses come from this block of 127.0.0.0/8")
    p.add_argument("--keep-node", action="store_true", help="leave the Node object registered at exit")
    p.add_argument("--no-logs-server", action="store_true", help="no `kubectl logs` endpoint")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = NodeConfig(
        name=args.name,
        state_dir=args.state_dir,
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus,
        pod_cidr=args.pod_cidr,
        delete_node_on_exit=not args.keep_node,
        serve_logs=not args.no_logs_server,
    )
    try:
        require_tools()
        node = ProcessNode(KubeClient(args.kubeconfig), config)
    except (HostError, ValueError, OSError) as e:
        print(f"procnode: {e}", file=sys.stderr)
        return 1
    # SIGTERM or Ctrl-C: the loop ends after its current step, then every pod is stopped.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: node.stopping.set())
    code = 0
    try:
        node.start()
        print(f"procnode: node {args.name} ready; pod logs in {node.logs_dir}", flush=True)
        node.serve_forever()
    except (HostError, OSError) as e:
        print(f"procnode: {e}", file=sys.stderr)
        code = 1
    finally:
        node.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
