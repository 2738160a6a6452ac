"""What `make demo` and `make test` need on this machine, installed when missing and skipped when present.

    python3 dev/prereqs.py demo|demo-real|test     (standard library only: it runs before anything is installed)

* Debian packages from dev/apt-packages.txt (all for `test` and `demo-real`; the process node's for `demo`), through
  apt-get when it runs as root, else one line naming what to install.
* The Python packages of pyproject.toml with the extras the target needs, via `pip install -e`. A stamp
  keyed by pyproject.toml, the extras, the interpreter and this checkout marks a finished install, so a
  warm run costs a few imports' lookup, not a pip resolve.
* Go is checked by dev/build-binaries.sh, only when a binary has to be built.
Every failure is one line saying what to install, and the exit status is 1.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PHALANX_CACHE", str(Path.home() / ".cache" / "phalanx")))

# target -> pip extras, modules that must then import, Debian packages (None: all of apt-packages.txt)
TARGETS = {
    "demo": (["torch"], ["kopf", "kubernetes", "pydantic", "prometheus_client", "yaml", "torch"],
             ["gcc", "util-linux", "openssl"]),
    # The real node's container runtime and image tools besides: all of apt-packages.txt.
    "demo-real": (["torch"], ["kopf", "kubernetes", "pydantic", "prometheus_client", "yaml", "torch"], None),
    "test": (["dev", "torch", "tensorflow"],
             ["kopf", "kubernetes", "pydantic", "prometheus_client", "yaml", "torch", "tensorflow", "tf_keras",
              "pytest", "mypy", "ruff", "importlinter", "matplotlib", "grafana_foundation_sdk"], None),
}  # fmt: skip
# Commands the Debian packages above provide: how a missing package is noticed without dpkg.
COMMANDS = {"gcc": "gcc", "util-linux": "unshare", "openssl": "openssl"}


class Missing(Exception):
    """A prerequisite that cannot be installed from here; the message says what to do."""


def say(text: str) -> None:
    print(f"[prereqs] {text}", flush=True)


def apt_packages(wanted: list[str] | None) -> list[str]:
    listed = [
        line.strip()
        for line in (REPO / "dev" / "apt-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return listed if wanted is None else [p for p in listed if p in wanted]


def missing_debs(pkgs: list[str]) -> list[str]:
    if shutil.which("dpkg-query") is None:  # not Debian: judge by the commands they provide
        return [p for p in pkgs if p in COMMANDS and shutil.which(COMMANDS[p]) is None]
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *pkgs], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in pkgs if p not in installed]


def ensure_debs(pkgs: list[str]) -> None:
    missing = missing_debs(pkgs)
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Missing(f"missing system packages: {' '.join(missing)}; install them (Debian: apt-get install "
                      f"{' '.join(missing)}) and rerun")  # fmt: skip
    say(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if subprocess.run(argv, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise Missing(f"`{' '.join(argv)}` failed; install {' '.join(missing)} by hand and rerun")


def stamp_for(extras: list[str]) -> Path:
    h = hashlib.sha256()
    for part in ((REPO / "pyproject.toml").read_bytes(), ",".join(extras).encode(), sys.executable.encode(),
                 str(REPO).encode()):  # fmt: skip
        h.update(part + b"\0")
    return CACHE / "deps" / h.hexdigest()[:16]


def unimportable(modules: list[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def ensure_python(extras: list[str], modules: list[str]) -> None:
    stamp = stamp_for(extras)
    if stamp.exists() and not unimportable(modules):
        say(f"python packages [{','.join(extras)}] already installed")
        return
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise Missing(f"pip is missing for {sys.executable}; install it (Debian: apt-get install python3-pip) "
                      "and rerun")  # fmt: skip
    say(f"pip install -e .[{','.join(extras)}] (first time: several GB for torch, ~6 min)")
    t = time.monotonic()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    argv = [sys.executable, "-m", "pip", "install", "-q", "-e", f"{REPO}[{','.join(extras)}]"]
    if subprocess.run(argv, env=env).returncode != 0:
        raise Missing(f"`{' '.join(argv)}` failed (its output is above); fix that and rerun")
    still = unimportable(modules)
    if still:
        raise Missing(f"installed, but these still do not import: {' '.join(still)}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n")
    say(f"python packages installed in {time.monotonic() - t:.0f} s")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in TARGETS:
        print(f"usage: python3 dev/prereqs.py {'|'.join(TARGETS)}", file=sys.stderr)
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036 - this runs before anything checked the interpreter
        print(f"[prereqs] error: Python >= 3.11 is needed, {sys.executable} is "
              f"{'.'.join(map(str, sys.version_info[:3]))}; install it and run make PYTHON=python3.11 ...",
              file=sys.stderr)  # fmt: skip
        return 1
    extras, modules, debs = TARGETS[argv[0]]
    try:
        ensure_debs(apt_packages(debs))
        ensure_python(extras, modules)
    except Missing as e:
        print(f"[prereqs] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
