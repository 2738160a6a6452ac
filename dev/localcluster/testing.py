"""Small helpers for tests against the local cluster (used by tests/conftest.py; reusable elsewhere)."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from localcluster import binaries

T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Call fn until it returns something truthy; return that. Raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def unique_namespace_name(hint: str) -> str:
    """A valid, unique namespace name derived from e.g. a test's name."""
    base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
    return f"t-{base}-{secrets.token_hex(3)}"


def create_namespace(core_v1: Any, name: str, labels: dict[str, str] | None = None, timeout: float = 30.0) -> str:
    """Create a namespace and wait for its `default` ServiceAccount (the controller-manager adds it a
    moment later; pods created before it exists are rejected)."""
    core_v1.create_namespace({"metadata": {"name": name, "labels": labels or {}}})

    def has_sa() -> bool:
        return any(sa.metadata.name == "default" for sa in core_v1.list_namespaced_service_account(name).items)

    wait_for(has_sa, timeout=timeout, what=f"ServiceAccount {name}/default")
    return name


class Kubectl:
    """Runs the cached kubectl against one kubeconfig: kubectl("get", "pods", "-n", ns)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.exe = binaries.kubectl()

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.exe), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def apply_crd(self, path: Path, timeout: float = 60.0) -> None:
        """Server-side apply the CRD(s) in `path` and wait until each is Established. Not `kubectl wait`:
        it fails at once while a new CRD has no status.conditions yet."""
        out = self("apply", "--server-side", "--force-conflicts", "-f", str(path), "-o", "name")
        names = out.stdout.split()
        established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'

        def ready() -> bool | None:
            return all(self("get", n, "-o", established, check=False).stdout.strip() == "True" for n in names) or None

        wait_for(ready, timeout=timeout, what=f"{' '.join(names)} Established")
