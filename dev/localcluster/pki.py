"""A throwaway PKI for one local cluster, made with the openssl CLI (Python's stdlib cannot sign X.509).

One CA signs: the apiserver's serving cert (SAN 127.0.0.1), and client certs whose subject is the
identity RBAC sees: admin (group system:masters), system:kube-controller-manager and
system:kube-scheduler (bound by the apiserver's bootstrap RBAC), and kwok (system:masters: it acts for
every simulated kubelet). A separate key pair signs service-account tokens. ECDSA P-256 keys: generated
in milliseconds, accepted by every component.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.errors import ClusterError

# (file stem, subject) of each client certificate.
CLIENTS: dict[str, str] = {
    "admin": "/O=system:masters/CN=phalanx-admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
    "kube-scheduler": "/CN=system:kube-scheduler",
    "kwok": "/O=system:masters/CN=kwok-controller",
    # The real node (PROFILE=real): the apiserver's client cert for kubelet logs/exec, CoreDNS (bound
    # to a read-only ClusterRole), and the kubelet itself (the Node authorizer's identity).
    "kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
    "coredns": "/CN=phalanx-coredns",
    "node": "/O=system:nodes/CN=system:node:phalanx-real-0",
}
# The real node's kubelet serves on the pod bridge's gateway address (realnode.GATEWAY).
KUBELET_SANS = ("IP:10.244.0.1", "DNS:phalanx-real-0")
APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",  # first address of --service-cluster-ip-range: in-cluster clients dial it
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ClusterError("openssl is not installed; install it (apt-get install -y openssl) and retry")
    res = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {res.stderr.strip()[:300]}")


def _key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    path.chmod(0o600)


def _sign(pki: Pki, name: str, subject: str, extensions: str) -> None:
    csr = pki.dir / f"{name}.csr"
    ext = pki.dir / f"{name}.ext"
    ext.write_text(extensions)
    _key(pki.key(name))
    _openssl("req", "-new", "-key", str(pki.key(name)), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_crt), "-CAkey", str(pki.ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", "3650", "-sha256",
        "-extfile", str(ext), "-out", str(pki.crt(name)),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def sign_serving(pki: Pki, name: str, sans: tuple[str, ...]) -> tuple[Path, Path]:
    """A serving cert signed by the cluster's CA, for a server started after the cluster (Kueue's
    webhooks): the apiserver trusts it through the CA it is given as caBundle. Returns (crt, key)."""
    usage = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    _sign(pki, name, f"/CN={name}", usage + "extendedKeyUsage=serverAuth\nsubjectAltName=" + ",".join(sans) + "\n")
    return pki.crt(name), pki.key(name)


def sign_client(pki: Pki, name: str, subject: str) -> None:
    """A client cert for a component started after the cluster (Kueue's manager)."""
    _sign(pki, name, subject, "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          "extendedKeyUsage=clientAuth\n")  # fmt: skip


def create(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _key(pki.ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pki.ca_key), "-subj", "/CN=phalanx-local-ca", "-days", "3650",
        "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(pki.ca_crt),
    )  # fmt: skip
    usage = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    _sign(
        pki, "apiserver", "/CN=kube-apiserver",
        usage + "extendedKeyUsage=serverAuth\nsubjectAltName=" + ",".join(APISERVER_SANS) + "\n",
    )  # fmt: skip
    _sign(
        pki, "kubelet-serving", "/CN=phalanx-real-0",
        usage + "extendedKeyUsage=serverAuth\nsubjectAltName=" + ",".join(KUBELET_SANS) + "\n",
    )  # fmt: skip
    for name, subject in CLIENTS.items():
        _sign(pki, name, subject, usage + "extendedKeyUsage=clientAuth\n")
    _key(pki.sa_key)
    _openssl("ec", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    return pki
