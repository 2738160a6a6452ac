"""A TLS-intercepting network's CA never ends up in an image (dev/localcluster/ca_leak.py).

The matcher is tested on files made here from a real certificate (one of the host's public roots);
the realnode-marked tests run buildah: a Dockerfile that copies the build's mounted CA into a layer
is refused and its image removed, and the three images of `make images` hold no foreign CA.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from localcluster import ca_leak, images
from localcluster.errors import ClusterError

PUBLIC = sorted(Path(ca_leak.PUBLIC_ROOTS).rglob("*.crt"))


def two_certs() -> tuple[bytes, bytes]:
    if len(PUBLIC) < 2:
        pytest.fail(f"{ca_leak.PUBLIC_ROOTS} has fewer than 2 certificates: install ca-certificates")
    first, second = (next(iter(ca_leak.pem_certs(p.read_bytes()))) for p in PUBLIC[:2])
    return first, second


def pem(der: bytes, width: int) -> bytes:
    body = base64.b64encode(der).decode()
    lines = "\n".join(body[i : i + width] for i in range(0, len(body), width))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n".encode()


def test_pem_certs_reads_each_certificate_of_a_bundle() -> None:
    a, b = two_certs()
    assert ca_leak.pem_certs(b"junk\n" + pem(a, 64) + b"\n" + pem(b, 64)) == {a, b}
    assert ca_leak.pem_certs(b"no certificate here") == set()


def test_a_certificate_is_found_as_pem_at_either_width_or_as_der_and_no_other_is(tmp_path: Path) -> None:
    a, b = two_certs()
    (tmp_path / "etc").mkdir()
    (tmp_path / "pem64.crt").write_bytes(b"prefix " + pem(a, 64))
    (tmp_path / "etc" / "mime76.txt").write_bytes(pem(a, 76))
    (tmp_path / "blob.der").write_bytes(b"\x00" * 100 + a + b"\x00" * 100)
    (tmp_path / "other.crt").write_bytes(pem(b, 64))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "link.crt").symlink_to(tmp_path / "pem64.crt")  # a link is its target's business
    assert ca_leak.files_holding(tmp_path, ca_leak.needles({a})) == ["blob.der", "etc/mime76.txt", "pem64.crt"]
    assert ca_leak.files_holding(tmp_path, ca_leak.needles(set())) == []


def test_without_a_host_bundle_nothing_can_leak() -> None:
    assert ca_leak.leaks("any", None, "any") == []


def need_buildah() -> str:
    if shutil.which("buildah") is None or shutil.which("mmdebstrap") is None:
        pytest.fail("buildah and mmdebstrap are needed (dev/apt-packages.txt; .ci/run installs them)")
    return images.ensure_base(print)


def intercepting_ca(tmp_path: Path) -> Path:
    """A host bundle as an intercepting network makes it: the public roots plus a CA of its own."""
    key, crt = tmp_path / "ca.key", tmp_path / "ca.crt"
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
           "-days", "1", "-subj", "/CN=phalanx test intercepting CA"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"".join(p.read_bytes() for p in PUBLIC) + crt.read_bytes())
    return bundle


@pytest.mark.realnode
def test_an_image_that_keeps_the_build_ca_is_refused_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = need_buildah()
    monkeypatch.setenv("PIP_CERT", str(intercepting_ca(tmp_path)))  # the bundle the build mounts
    assert len(ca_leak.foreign_certs(images.host_ca_bundle() or Path("/nonexistent"), base)) == 1
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(textwrap.dedent("""\
        ARG PYTHON_IMAGE
        FROM ${PYTHON_IMAGE}
        ARG PIP_CERT
        RUN cp "$PIP_CERT" /opt/kept-by-mistake.pem
    """))  # fmt: skip
    image = images.Image("ca-leak-probe", "unused", variant="test")
    cmd = images.build_command(image, base, "probe")
    cmd[cmd.index("-f") + 1] = str(dockerfile)
    cmd.remove("--layers")  # no cached layer of the probe stays behind
    with pytest.raises(ClusterError, match=r"host's own CA .* in opt/kept-by-mistake\.pem; the image was removed"):
        images.build_from(image, base, cmd, print)
    assert images.image_id(image.ref) is None


@pytest.mark.realnode
@pytest.mark.parametrize("image", images.images("cpu"), ids=lambda i: i.name)
def test_the_built_images_hold_no_foreign_ca(image: images.Image) -> None:
    base = need_buildah()
    if images.image_id(image.ref) is None:
        pytest.fail(f"{image.ref} is not built: run `make images`")
    assert ca_leak.leaks(image.ref, images.host_ca_bundle(), base) == []
