"""Host-side helpers of the node: the bind shim, pod addresses, hosts files, the logs certificate."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("bindshim.c")
LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")


class HostError(Exception):
    """The machine lacks something the node needs; the message says what to install."""


def require_tools() -> None:
    missing = [t for t in ("unshare", "setpriv") if shutil.which(t) is None]
    if missing:
        raise HostError(f"procnode needs {', '.join(missing)} from util-linux: apt-get install util-linux")
    if os.geteuid() != 0:
        raise HostError("procnode needs root: it gives each pod a mount namespace (unshare --mount)")


def build_shim(out_dir: Path) -> Path:
    """Compile bindshim.c once per source version (milliseconds); returns the .so path."""
    source = SHIM_SOURCE.read_bytes()
    out = out_dir / f"bindshim-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise HostError("procnode compiles a small LD_PRELOAD shim and needs a C compiler: apt-get install gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SHIM_SOURCE), "-ldl"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise HostError(f"compiling {SHIM_SOURCE} failed: {result.stderr.strip()[-600:]}")
    tmp.replace(out)
    return out


def make_serving_cert(out_dir: Path) -> tuple[Path, Path] | None:
    """A self-signed cert for the logs endpoint (the apiserver does not verify kubelet certs unless
    --kubelet-certificate-authority is set). None when openssl is missing: no `kubectl logs` then."""
    crt, key = out_dir / "logs.crt", out_dir / "logs.key"
    if crt.exists() and key.exists():
        return crt, key
    if shutil.which("openssl") is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "30", "-subj", "/CN=procnode", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(crt)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    return (crt, key) if result.returncode == 0 else None


class AddressPool:
    """Pod addresses from a block of 127.0.0.0/8, handed out in order and reused only after a wrap,
    so a recreated pod (same name) gets a new address, as on a real cluster."""

    def __init__(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(LOOPBACK_V4):
            raise ValueError(f"pod CIDR {cidr} must lie inside 127.0.0.0/8 (the node binds loopback only)")
        self.hosts = [ip for ip in net.hosts() if ip.packed[3] not in (0, 1, 255)]
        if not self.hosts:
            raise ValueError(f"pod CIDR {cidr} has no usable address")
        self._next = 0

    def allocate(self, in_use: Iterable[str]) -> str:
        taken = set(in_use)
        for _ in range(len(self.hosts)):
            ip = str(self.hosts[self._next])
            self._next = (self._next + 1) % len(self.hosts)
            if ip not in taken:
                return ip
        raise HostError("no free pod address left in the pod CIDR")


def write_lines(path: Path, old: list[str], new: list[str]) -> None:
    """Update a bind-mounted file in place (same inode, so the pod's mount sees it). When only lines
    are added they are appended, so a reader never sees an entry disappear."""
    if new[: len(old)] == old and path.exists():
        with open(path, "a") as fh:
            fh.write("".join(f"{line}\n" for line in new[len(old) :]))
        return
    data = "".join(f"{line}\n" for line in new)
    with open(path, "a+") as fh:
        fh.seek(0)
        fh.truncate()
        fh.write(data)


def merge_lines(old: list[str], desired: list[str]) -> list[str]:
    """Keep the lines that stay in their old order and add the new ones at the end."""
    want = set(desired)
    kept = [line for line in old if line in want]
    have = set(kept)
    return kept + [line for line in desired if line not in have]
