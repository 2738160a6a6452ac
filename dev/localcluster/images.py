"""`make images`: the three images of images/*/Dockerfile, built here without any registry.

No registry is reachable from this machine, so the Dockerfiles' `PYTHON_IMAGE` base is made from
Debian packages (mmdebstrap) and imported into buildah's local store. Each Dockerfile is then built
unchanged with buildah. Every image carries a label with the hash of all its inputs (Dockerfile,
requirements, the sources it copies, the base, the build arguments); an image whose label matches
is not rebuilt.

A network that intercepts TLS needs its CA for pip. The host's CA bundle is mounted into the build's
RUN steps only (`buildah bud -v`: a bind mount, which buildah keeps out of the layers), and no
Dockerfile COPYs or ADDs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import ca_leak
from localcluster.binaries import REPO_ROOT, cache_dir
from localcluster.errors import ClusterError

Log = Callable[[str], None]

# The tag the chart (appVersion) and the examples name, so both run unchanged on the local cluster.
VERSION = "0.1.0"
REGISTRY = "ghcr.io/phalanx-dev"
INPUTS_LABEL = "dev.phalanx.inputs"
# Debian's python3 is the base's Python; python3-venv because the Dockerfiles build a venv.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
# Where the host's CA bundle appears inside a RUN step (and only there).
BUILD_CA = "/run/phalanx-build-ca.pem"
HOST_CA_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
COPY_RE = re.compile(r"^\s*(COPY|ADD)\s+(.*)$", re.IGNORECASE)
STEP_RE = re.compile(r"^(\[\d+/\d+\] )?STEP \d+/\d+: ")  # buildah's, "[stage/stages] " in multi-stage builds
SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class Image:
    """One image of images/<dir>/Dockerfile, and the build arguments of its variant."""

    name: str
    dir: str
    build_args: tuple[tuple[str, str], ...] = ()
    variant: str = ""

    @property
    def dockerfile(self) -> Path:
        return REPO_ROOT / "images" / self.dir / "Dockerfile"

    @property
    def ref(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"{REGISTRY}/{self.name}:{VERSION}{suffix}"


# The local cluster has no GPUs: its trainer images are the CPU variants (same Dockerfile, one build
# argument), a fraction of the CUDA builds' size. `--accelerator cuda` builds the published ones.
def images(accelerator: str = "cpu") -> list[Image]:
    if accelerator not in ("cpu", "cuda"):
        raise ClusterError(f"unknown accelerator {accelerator!r}: use cpu or cuda")
    variant = "" if accelerator == "cuda" else accelerator
    args = (("ACCELERATOR", accelerator),)
    return [
        Image("phalanx-operator", "operator"),
        Image("trainer-pytorch", "trainer-pytorch", args, variant),
        Image("trainer-tensorflow", "trainer-tensorflow", args, variant),
    ]


@dataclass
class Built:
    image: Image
    id: str
    size: int
    seconds: float
    cached: bool
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        how = "cached" if self.cached else f"built in {self.seconds:.0f} s"
        return f"{self.image.ref}: {self.size / 1e6:,.0f} MB, {how}"


def _run(cmd: list[str], *, progress: Log | None = None, timeout: float = 3600) -> str:
    """Run a tool and return its stdout; with `progress`, each build step (buildah's `STEP n/m:` lines)
    is passed on as it starts, with the seconds since the start, since a cold build takes minutes."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if progress else subprocess.PIPE,
                                text=True)  # fmt: skip
    except FileNotFoundError as e:
        raise ClusterError(
            f"{cmd[0]} is not installed; it comes with dev/apt-packages.txt (.ci/run installs it)"
        ) from e
    t0 = time.monotonic()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        if progress is None:
            out, err = proc.communicate()
        else:
            lines: list[str] = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if STEP_RE.search(line):
                    progress(f"  +{time.monotonic() - t0:4.0f} s  {line.strip()[:110]}")
            out, err = "".join(lines), ""
            proc.wait()
    finally:
        killer.cancel()
    if proc.returncode != 0:
        why = f"killed after {timeout:.0f} s" if proc.returncode == -9 else f"exit {proc.returncode}"
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        raise ClusterError(f"`{shlex.join(cmd[:4])} ...` failed ({why}):\n{tail}")
    return out


def _sha(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def apt_sources() -> list[Path]:
    """The host's apt sources, which the base image is built from (the only reachable mirror)."""
    found = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    out = [p for p in found if p.is_file() and p.suffix in (".list", ".sources") and p.read_text().strip()]
    if not out:
        raise ClusterError("no apt sources found in /etc/apt: the base image is built from Debian packages")
    return out


def suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise ClusterError("/etc/os-release names no VERSION_CODENAME: cannot tell which Debian suite to use")


def base_ref() -> str:
    parts = [suite().encode(), " ".join(BASE_PACKAGES).encode(), " ".join(BASE_EXCLUDES).encode()]
    parts += [p.read_bytes() for p in apt_sources()]
    return f"localhost/phalanx-base:{_sha(parts)[:16]}"


def _inspect(ref: str) -> dict[str, Any] | None:
    """buildah's record of a local image, or None when there is no such image."""
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True)
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else None


def image_id(ref: str) -> str | None:
    found = _inspect(ref)
    return str(found["FromImageID"]) if found else None


def _label(ref: str, key: str) -> str | None:
    found = _inspect(ref)
    if found is None:
        return None
    value = ((found.get("OCIv1", {}).get("config") or {}).get("Labels") or {}).get(key)
    return str(value) if value else None


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def image_size(ref: str) -> int:
    """Bytes, from buildah's human-readable size ("176 MB"; decimal units, as buildah prints)."""
    text = str(json.loads(_run(["buildah", "images", "--json", ref]))[0]["size"])
    m = re.fullmatch(r"([\d.]+)\s*([KMGT]?B)", text.strip())
    if not m:
        raise ClusterError(f"cannot read the size {text!r} buildah reports for {ref}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def ensure_base(log: Log) -> str:
    """The Debian base (python3 + venv + CA certificates), made once per apt sources and package list."""
    ref = base_ref()
    if image_id(ref):
        return ref
    log(f"base image {ref}: mmdebstrap {suite()} from the host's apt sources (about a minute)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phalanx-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        cmd = ["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(BASE_PACKAGES)}"]
        cmd += [f"--dpkgopt=path-exclude={p}" for p in BASE_EXCLUDES]
        cmd += [suite(), str(tar), *map(str, apt_sources())]
        _run(cmd, timeout=1200)
        container = _run(["buildah", "from", "scratch"]).strip()
        try:
            _run(["buildah", "add", "--quiet", container, str(tar), "/"])
            _run(["buildah", "config", "--cmd", '["python3"]', "--label", f"{INPUTS_LABEL}={ref}", container])
            _run(["buildah", "commit", "--quiet", container, ref])
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)
    log(f"base image {ref}: {image_size(ref) / 1e6:,.0f} MB in {time.monotonic() - t0:.0f} s")
    return ref


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths a Dockerfile's COPY/ADD instructions read (not those --from a stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[str] = []
    for line in text.splitlines():
        m = COPY_RE.match(line)
        if not m:
            continue
        words = shlex.split(m.group(2))
        if any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words if not w.startswith("--")]
        out += args[:-1]
    return out


def _context_files(patterns: list[str]) -> Iterator[Path]:
    for pattern in patterns:
        matches = sorted(REPO_ROOT.glob(pattern)) if any(c in pattern for c in "*?[") else [REPO_ROOT / pattern]
        if not matches or not all(m.exists() for m in matches):
            raise ClusterError(f"a COPY source is missing from the repository: {pattern}")
        for m in matches:
            if m.is_dir():
                yield from (p for p in sorted(m.rglob("*")) if p.is_file() and not SKIP_PARTS & set(p.parts))
            else:
                yield m


def inputs_key(image: Image, base: str) -> str:
    """Everything the image is made from: a change to any of it means a rebuild."""
    parts = [image.dockerfile.read_bytes(), base.encode(), repr(image.build_args).encode()]
    for p in _context_files(copy_sources(image.dockerfile)):
        parts += [str(p.relative_to(REPO_ROOT)).encode(), p.read_bytes()]
    return _sha(parts)


def host_ca_bundle() -> Path | None:
    """The CA bundle pip on this host trusts (PIP_CERT etc.), which includes any intercepting CA."""
    for env in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(env)
        if value and Path(value).is_file():
            return Path(value)
    return next((Path(p) for p in HOST_CA_CANDIDATES if Path(p).is_file()), None)


def build_command(image: Image, base: str, key: str) -> list[str]:
    cmd = ["buildah", "bud", "--isolation", "chroot", "--network", "host", "--pull-never", "--layers"]
    ca = host_ca_bundle()
    if ca is not None:
        cmd += ["-v", f"{ca}:{BUILD_CA}:ro", "--build-arg", f"PIP_CERT={BUILD_CA}"]
    cmd += ["--build-arg", f"PYTHON_IMAGE={base}"]
    for k, v in image.build_args:
        cmd += ["--build-arg", f"{k}={v}"]
    cmd += ["--label", f"{INPUTS_LABEL}={key}", "-f", str(image.dockerfile), "-t", image.ref, str(REPO_ROOT)]
    return cmd


def build(image: Image, log: Log) -> Built:
    base = ensure_base(log)
    key = inputs_key(image, base)
    if _label(image.ref, INPUTS_LABEL) == key:
        return Built(image, image_id(image.ref) or "", image_size(image.ref), 0.0, cached=True)
    log(f"{image.ref}: building from {image.dockerfile.relative_to(REPO_ROOT)} (inputs {key[:12]})")
    seconds = build_from(image, base, build_command(image, base, key), log)
    return Built(image, image_id(image.ref) or "", image_size(image.ref), seconds, cached=False)


def build_from(image: Image, base: str, cmd: list[str], log: Log) -> float:
    """Run the build; an image that holds the host's own CA is removed and refused. Returns seconds."""
    t0 = time.monotonic()
    _run(cmd, progress=log, timeout=3600)
    seconds = time.monotonic() - t0
    leaked = ca_leak.leaks(image.ref, host_ca_bundle(), base)
    if leaked:
        subprocess.run(["buildah", "rmi", "--force", image.ref], capture_output=True)
        raise ClusterError(
            f"{image.ref}: the host's own CA (not Debian's) is in the image, in {', '.join(leaked[:5])}; the"
            f" image was removed. Only RUN steps may see it, through the build's bind mount at {BUILD_CA}."
        )
    return seconds


def build_all(log: Log, *, accelerator: str = "cpu", only: Iterable[str] = ()) -> list[Built]:
    wanted = set(only)
    chosen = [i for i in images(accelerator) if not wanted or i.name in wanted]
    if wanted - {i.name for i in chosen}:
        names = ", ".join(i.name for i in images(accelerator))
        raise ClusterError(f"unknown image(s) {', '.join(sorted(wanted))}: choose from {names}")
    out = []
    for image in chosen:
        built = build(image, log)
        log(built.line())
        out.append(built)
    return out


def archive(ref: str) -> Path:
    """A docker-archive of the image for `ctr images import`, named by image ID."""
    found = image_id(ref)
    if found is None:
        raise ClusterError(f"image {ref} is not built: run `make images`")
    out = cache_dir() / "images" / f"{found.removeprefix('sha256:')[:20]}.tar"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob("*.tar.partial"):
            stale.unlink()
        partial = out.with_suffix(".tar.partial")
        _run(["buildah", "push", "--quiet", ref, f"docker-archive:{partial}:{ref}"], timeout=1800)
        partial.rename(out)
    return out


def require_tools() -> None:
    missing = [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]
    if missing:
        raise ClusterError(
            f"{', '.join(missing)} not installed: apt-get install {' '.join(missing)} (see dev/apt-packages.txt)"
        )
