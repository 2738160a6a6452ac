"""python -m localcluster up [--profile NAME] [--nodes N] [--dir DIR] [--kueue] | down | status | images"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from localcluster import cluster, images
from localcluster.errors import ClusterError
from localcluster.layout import DIR_ENV
from localcluster.profiles import NODES_ENV, available_profiles


def _log(line: str) -> None:
    # Progress is a courtesy: a closed stdout (`up | head`) must not abort a start half-way.
    try:
        print(line, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster",
        description="A local Kubernetes control plane with simulated GPU/TPU nodes (docs/local-cluster.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dir_help = f"state directory (default: ${DIR_ENV} or .cluster/ in the repo root)"
    p_up = sub.add_parser("up", help="start the cluster (or report the running one) and wait until usable")
    p_up.add_argument("--profile", default="default", help=f"node profile: {', '.join(available_profiles())}")
    p_up.add_argument("--nodes", type=int, default=None, help=f"size of the profile's scalable pool (or ${NODES_ENV})")
    p_up.add_argument("--dir", type=Path, default=None, help=dir_help)
    p_up.add_argument(
        "--kueue", action="store_true", help="also run Kueue (built by `bash dev/build-binaries.sh kueue`)"
    )
    p_up.add_argument(
        "--kueue-pods-ready-timeout", default=None, metavar="DURATION",
        help="Kueue's waitForPodsReady timeout, a Go duration (default 30s; 3m with a real node)",
    )  # fmt: skip
    p_down = sub.add_parser("down", help="stop the processes `up` started, in reverse order")
    p_down.add_argument("--dir", type=Path, default=None, help=dir_help)
    p_status = sub.add_parser("status", help="show components, health and nodes; exit 1 unless usable")
    p_status.add_argument("--dir", type=Path, default=None, help=dir_help)
    p_images = sub.add_parser("images", help="build images/*/Dockerfile here (cached by their inputs)")
    p_images.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"), help="trainer images' variant")
    p_images.add_argument("--only", nargs="*", default=(), metavar="NAME", help="build only these images")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            info = cluster.up(
                args.profile, args.dir, nodes=args.nodes, kueue=args.kueue, log=_log,
                kueue_pods_ready_timeout=args.kueue_pods_ready_timeout,
            )  # fmt: skip
            _log(info.usage())
        elif args.command == "images":
            images.require_tools()
            images.build_all(_log, accelerator=args.accelerator, only=args.only)
        elif args.command == "down":
            cluster.down(args.dir, log=_log)
        else:
            ok, text = cluster.status(args.dir)
            print(text)
            return 0 if ok else 1
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the processes started so far were stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so a half-done `up` stops what it started.
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
