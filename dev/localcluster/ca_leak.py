"""Whether a TLS-intercepting network's CA leaked into an image.

pip inside `make images` trusts the host's CA bundle, which on an intercepting network holds that
network's own CA. The bundle is bind-mounted into RUN steps only (images.build_command), so no layer
should hold it; this module checks the built image's files for it, so a Dockerfile change that COPYs
it, or a pip that writes it into the venv, fails the build instead of shipping.

The foreign certificates are those the host trusts beyond the public roots (the host's and the Debian
base's ca-certificates): on an intercepting network, that network's CA.
"""

from __future__ import annotations

import base64
import mmap
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localcluster.errors import ClusterError

PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
BUNDLE = "etc/ssl/certs/ca-certificates.crt"
SKIP_DIRS = ("proc", "sys", "dev")
PUBLIC_ROOTS = "/usr/share/ca-certificates"


def pem_certs(data: bytes) -> set[bytes]:
    """The DER bytes of each PEM certificate in `data`."""
    return {base64.b64decode(re.sub(rb"\s+", b"", body)) for body in PEM_RE.findall(data)}


def _buildah(*args: str) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ClusterError(f"`buildah {' '.join(args[:2])}` failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


@contextmanager
def mounted(ref: str) -> Iterator[Path]:
    """The image's root filesystem, read from a working container that is removed afterwards."""
    container = _buildah("from", "--pull-never", "--quiet", ref)
    try:
        yield Path(_buildah("mount", container))
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, timeout=300)


def foreign_certs(host_bundle: Path, base_ref: str) -> set[bytes]:
    """What the host trusts beyond the public roots: its own and Debian's (ca-certificates keeps the
    public ones in /usr/share/ca-certificates; local additions live elsewhere)."""
    public: set[bytes] = set()
    for crt in sorted(Path(PUBLIC_ROOTS).rglob("*.crt")):
        public |= pem_certs(crt.read_bytes())
    with mounted(base_ref) as root:
        public |= pem_certs((root / BUNDLE).read_bytes())
    return pem_certs(host_bundle.read_bytes()) - public


def needles(certs: set[bytes]) -> list[bytes]:
    """What a copy of each certificate looks like in a file: its DER bytes, or a middle line of its
    PEM text (the public key's, unique to it) as wrapped at 64 columns (PEM) or 76 (MIME)."""
    out: list[bytes] = []
    for der in certs:
        text = base64.b64encode(der)
        out.append(der)
        for width in (64, 76):
            mid = len(text) // width // 2
            out.append(text[mid * width : (mid + 1) * width])
    return out


def files_holding(root: Path, patterns: list[bytes]) -> list[str]:
    """Paths (relative to root) of regular files that contain any of the patterns."""
    hits: list[str] = []
    if not patterns:
        return hits
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or path.is_symlink() or not path.is_file():
            continue
        size = path.stat().st_size
        if size == 0:
            continue
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if any(m.find(p) != -1 for p in patterns):
                hits.append(str(rel))
    return hits


def leaks(ref: str, host_bundle: Path | None, base_ref: str) -> list[str]:
    """Files of image `ref` that hold a certificate the host trusts and Debian does not."""
    if host_bundle is None:
        return []
    patterns = needles(foreign_certs(host_bundle, base_ref))
    with mounted(ref) as root:
        return files_holding(root, patterns)
