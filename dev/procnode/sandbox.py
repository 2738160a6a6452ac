"""The last step before a pod's command runs: `python -m procnode.sandbox SPEC.json`.

The node starts it as `setpriv --pdeathsig KILL unshare --mount --uts --propagation private python
-m procnode.sandbox SPEC`: a fresh mount and UTS namespace, private propagation (nothing mounted
here leaks to the host). In it this module sets the pod's hostname, bind-mounts the pod's hosts file
over /etc/hosts, mounts its volumes at their mount paths, changes to the working directory and
execs the command with the pod's env, so the command's pid is the pid the node watches.

Standard library only, and short: it runs once per container start. If a step fails it writes the
reason to SPEC's `error_file` and exits 127; the node reports that as StartError (exit code 128).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from typing import Any

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
START_FAILED = 127

_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}")


def apply_mount(m: dict[str, Any]) -> None:
    target = m["target"]
    if m["kind"] == "tmpfs":
        options = "mode=1777" + (f",size={m['size']}" if m.get("size") else "")
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        return
    mount(m["source"], target, None, MS_BIND | MS_REC)
    if m.get("read_only"):
        mount("", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def run(spec: dict[str, Any]) -> None:
    socket.sethostname(spec["hostname"])
    mount(spec["hosts_file"], "/etc/hosts", None, MS_BIND)
    if os.path.exists("/etc/hostname"):
        mount(spec["hostname_file"], "/etc/hostname", None, MS_BIND)
    for m in spec["mounts"]:
        apply_mount(m)
    os.chdir(spec["cwd"])
    argv: list[str] = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        raise OSError(e.errno, f"exec {argv[0]}: {e.strerror}") from e


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    try:
        run(spec)
    except OSError as e:
        with open(spec["error_file"], "w") as fh:
            fh.write((e.strerror or str(e)) + (f": {e.filename}" if e.filename else ""))
        sys.exit(START_FAILED)


if __name__ == "__main__":
    main()
