"""Health probes of each component's own endpoint."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from localcluster.pki import Pki


def _unverified() -> ssl.SSLContext:
    # The controller-manager and scheduler serve a cert they self-signed in their --cert-dir; on
    # loopback there is nothing to gain from pinning it.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def url(name: str, port: int) -> str:
    return {
        "etcd": f"http://127.0.0.1:{port}/health",
        "kube-apiserver": f"https://127.0.0.1:{port}/readyz",
        "kube-controller-manager": f"https://127.0.0.1:{port}/healthz",
        "kube-scheduler": f"https://127.0.0.1:{port}/healthz",
        "kwok": f"http://127.0.0.1:{port}/healthz",
    }[name]


def probe(name: str, port: int, pki: Pki, timeout: float = 2.0) -> bool:
    ctx: ssl.SSLContext | None = None
    if name == "kube-apiserver":
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(str(pki.crt("admin")), str(pki.key("admin")))
    elif name in ("kube-controller-manager", "kube-scheduler"):
        ctx = _unverified()
    try:
        with urllib.request.urlopen(url(name, port), timeout=timeout, context=ctx) as resp:
            body = resp.read().decode(errors="replace")
            return resp.status == 200 and (name != "etcd" or '"health":"true"' in body.replace(" ", ""))
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
