"""Fast tests of the process node's pure parts and of its bind shim; no cluster, no root.

(Not marked e2e: they run with the unit tests. They live here, next to the suite that uses the node.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_DEV = str(Path(__file__).resolve().parents[2] / "dev")
if _DEV not in sys.path:
    sys.path.insert(0, _DEV)

from procnode import host, podspec  # noqa: E402
from procnode.podspec import EnvError, Mount, Outcome  # noqa: E402


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j-worker-0", "namespace": "ns", "uid": "u0", "labels": {"app": "a"},
                     "annotations": {"note": "n"}},
        "spec": {"nodeName": "procnode", "hostname": "j-worker-0", "subdomain": "j", **spec},
    }  # fmt: skip


def test_expand_like_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert podspec.expand("$(A)-$(B)", env) == "1-two"
    assert podspec.expand("$$(A) $(MISSING) $", env) == "$(A) $(MISSING) $"


def test_env_downward_api_refs_and_order() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "ADDR", "value": "$(NAME).j:$(PORT)"},  # PORT is defined later: left as is
            {"name": "PORT", "value": "29500"},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "p", "optional": True}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    store = {("ConfigMap", "ns", "cm"): {"X": "1"}, ("Secret", "ns", "s"): {"p": "pw"}}
    env, notes = podspec.resolve_env(pod(), container, "127.0.0.9", "127.0.0.1", lambda k, n, m: store.get((k, n, m)))
    assert env == {"CM_X": "1", "NAME": "j-worker-0", "IP": "127.0.0.9", "APP": "a", "NOTE": "n",
                   "ADDR": "j-worker-0.j:$(PORT)", "PORT": "29500", "PASS": "pw"}  # fmt: skip
    assert len(notes) == 1 and "CPU" in notes[0]
    with pytest.raises(EnvError, match="configmap ns/gone"):
        podspec.resolve_env(pod(), {"envFrom": [{"configMapRef": {"name": "gone"}}]}, "", "", lambda *a: None)


def test_command_line() -> None:
    assert podspec.command_line({"args": ["x"]}, {}) == []  # the image's entrypoint: nothing to run here
    c = {"command": ["python", "-m", "m"], "args": ["--n", "$(N)"]}
    assert podspec.command_line(c, {"N": "3"}) == ["python", "-m", "m", "--n", "3"]


def test_hosts_file_names_self_and_namespace_peers() -> None:
    me = pod()
    peer = {"metadata": {"name": "j-worker-1", "namespace": "ns", "uid": "u1"},
            "spec": {"hostname": "j-worker-1", "subdomain": "j"}}  # fmt: skip
    other_ns = {"metadata": {"name": "j-worker-1", "namespace": "other", "uid": "u2"},
                "spec": {"hostname": "j-worker-1", "subdomain": "j"}}  # fmt: skip
    bare = {"metadata": {"name": "lonely", "namespace": "ns", "uid": "u3"}, "spec": {}}
    lines = podspec.hosts_lines(me, "127.0.0.2", [(me, "127.0.0.2"), (peer, "127.0.0.3"), (other_ns, "127.0.0.4"),
                                                   (bare, "127.0.0.5")])  # fmt: skip
    assert lines[2] == "127.0.0.2\tj-worker-0.j.ns.svc.cluster.local j-worker-0.j.ns.svc j-worker-0.j j-worker-0"
    # A peer resolves only by what cluster DNS would serve for it: <host>.<subdomain>[.<ns>.svc[.cluster.local]].
    assert lines[3:] == ["127.0.0.3\tj-worker-1.j.ns.svc.cluster.local j-worker-1.j.ns.svc j-worker-1.j"]


def test_mounts() -> None:
    container = {"volumeMounts": [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "ckpt", "mountPath": "/checkpoints"},
        {"name": "ckpt", "mountPath": "/sub", "subPath": "a/b", "readOnly": True},
        {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
    ]}  # fmt: skip
    volumes = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "ckpt", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "token", "projected": {"sources": []}},
    ]
    mounts, notes = podspec.mounts_for(
        container, volumes, lambda v: "/data/c" if "persistentVolumeClaim" in v else None
    )
    assert mounts == [
        Mount("/dev/shm", "tmpfs", size=str(8 << 30)),
        Mount("/checkpoints", "bind", "/data/c"),
        Mount("/sub", "bind", "/data/c/a/b", read_only=True),
    ]
    assert len(notes) == 1 and "projected" in notes[0]
    with pytest.raises(EnvError):
        podspec.mounts_for({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, [], lambda v: None)


def test_exit_codes_and_terminal_status() -> None:
    assert podspec.exit_code(-9) == 137 and podspec.exit_code(-15) == 143 and podspec.exit_code(3) == 3
    p = pod(containers=[{"name": "trainer", "image": "i"}])
    ok = podspec.terminal_status(p, {"trainer": Outcome(0, "Completed", "t0", "t1", pid=5)}, "127.0.0.2", "127.0.0.1")
    assert ok["status"]["phase"] == "Succeeded"
    state = ok["status"]["containerStatuses"][0]["state"]
    assert state["running"] is None and state["terminated"]["exitCode"] == 0  # null removes `running` in the patch
    bad = podspec.terminal_status(p, {"trainer": Outcome(137, "Error", "t0", "t1")}, "127.0.0.2", "127.0.0.1")
    assert bad["status"]["phase"] == "Failed"
    assert bad["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_address_pool() -> None:
    pool = host.AddressPool("127.0.0.0/24")
    first = pool.allocate([])
    assert first == "127.0.0.2"  # 127.0.0.1 is the host's
    assert pool.allocate(["127.0.0.3"]) == "127.0.0.4"
    seen = {pool.allocate([]) for _ in range(300)}
    assert not seen & {"127.0.0.0", "127.0.0.1", "127.0.0.255"}
    with pytest.raises(host.HostError):
        host.AddressPool("127.0.0.0/30").allocate(["127.0.0.2"])
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        host.AddressPool("10.0.0.0/24")


def test_hosts_file_updates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("")
    inode = path.stat().st_ino
    old: list[str] = []
    for desired in (["a", "b"], ["a", "b", "c"], ["b", "c"]):
        lines = host.merge_lines(old, desired)
        host.write_lines(path, old, lines)
        old = lines
    assert path.read_text() == "b\nc\n"
    assert path.stat().st_ino == inode  # the bind mount in the pod keeps seeing the same file
    assert host.merge_lines(["x", "y"], ["z", "y"]) == ["y", "z"]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_bind_shim_turns_wildcard_binds_into_the_pod_address(tmp_path: Path) -> None:
    shim = host.build_shim(tmp_path)
    script = (
        "import socket\n"
        "a = socket.socket(); a.bind(('0.0.0.0', 0)); print(a.getsockname()[0])\n"
        "b = socket.socket(socket.AF_INET6); b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
        "b.bind(('::', 0)); print(b.getsockname()[0])\n"
        "c = socket.socket(); c.bind(('127.0.0.1', 0)); print(c.getsockname()[0])\n"
    )
    env = {**os.environ, "LD_PRELOAD": str(shim), "PROCNODE_POD_IP": "127.0.0.77"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["127.0.0.77", "::ffff:127.0.0.77", "127.0.0.1"]
