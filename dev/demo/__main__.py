"""python -m demo: see demo/__init__.py."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from demo.story import Demo, DemoError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description="phalanx's story on a local cluster")
    p.add_argument("--node", choices=("real", "process"), default="real",
                   help="where the pods run: the process node, or the real node (containerd + kubelet)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the state dir (cluster, operator and pod logs)")
    p.add_argument("--since", type=float, help="unix time `make demo` started: the set-up time is printed too")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: the local node needs root (namespaces, mounts); run `sudo make demo`", file=sys.stderr)
        return 1
    setup = time.time() - args.since if args.since else None
    state = Path(tempfile.mkdtemp(prefix="phalanx-demo-"))
    demo = Demo(state, real=args.node == "real")
    signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        demo.start()
        name = demo.apply_job()
        ok = demo.finish(name, demo.follow(name))
    except KeyboardInterrupt:
        demo.say("interrupted; cleaning up")
    except (DemoError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        demo.say(f"demo failed: {e}")
    finally:
        demo.stop()
        if ok and not args.keep:
            shutil.rmtree(state, ignore_errors=True)
        else:
            demo.say(f"state kept in {state}: cluster/logs, operator.log, node logs")
    took = time.monotonic() - demo.t0
    print(
        f"\ndemo {'passed' if ok else 'FAILED'}: {took:.0f} s"
        + (f", after {setup:.0f} s of set-up (packages, binaries)" if setup is not None else ""),
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
