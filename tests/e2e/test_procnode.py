"""The process node on its own (no operator): plain pods with small Python commands.

What a kubelet owes the operator and the trainers: the env (downward API, $(VAR)), the pod's names
resolving to its own address, peers reaching each other on the same port, volumes at their paths,
the real exit code, SIGTERM then SIGKILL after the grace period on deletion, and the logs.
"""

from __future__ import annotations

import ipaddress
import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.testing import Kubectl
from procnode.testing import NodeProcess
from tests.e2e.conftest import on_procnode

pytestmark = pytest.mark.e2e


def pod(name: str, script: str | None, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "none"}
    if script is not None:
        container["command"] = ["python", "-c", textwrap.dedent(script)]
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "probe"}},
        "spec": on_procnode({"restartPolicy": "Never", "containers": [container], **spec}),
    }


def wait_pod(core: client.CoreV1Api, ns: str, name: str, pred: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    p = None
    while time.monotonic() < deadline:
        p = core.read_namespaced_pod(name, ns)
        if pred(p):
            return p
        time.sleep(0.2)
    raise AssertionError(f"pod {ns}/{name} not as expected after {timeout}s: {p.status if p else None}")


def finished(p: Any) -> bool:
    return p.status.phase in ("Succeeded", "Failed")


def terminated(p: Any) -> Any:
    return p.status.container_statuses[0].state.terminated


PROBE = """
    import json, os, socket
    out = {"hostname": socket.gethostname(), "cwd": os.getcwd()}
    fqdn = f"probe.grp.{os.environ['NS']}.svc"
    for n in ["probe", "probe.grp", fqdn, fqdn + ".cluster.local"]:
        out[n] = socket.gethostbyname(n)
    out["env"] = {k: os.environ.get(k) for k in ("POD_NAME", "POD_IP", "NS", "APP", "GREETING", "FROM_CM", "HOSTNAME")}
    mounts = {line.split()[4]: line.split(" - ")[1].split()[0] for line in open("/proc/self/mountinfo")}
    out["fs"] = {p: mounts.get(p) for p in ("/dev/shm", "/scratch", "/data", "/etc/hosts")}
    st = os.statvfs("/dev/shm")
    out["shm_bytes"] = st.f_blocks * st.f_frsize
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    out["wildcard_bind"] = s.getsockname()[0]
    open("/scratch/x", "w").write("scratch")
    json.dump(out, open("/data/probe.json", "w"))
    print("probe done", flush=True)
"""


def test_pod_env_names_volumes_and_status(
    procnode: NodeProcess, core_v1: client.CoreV1Api, namespace: str, apply: Callable[..., None],
    claim: Callable[[str], Path], kubectl: Kubectl,
) -> None:  # fmt: skip
    data = claim("data")
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "GREETING", "value": "hello-$(POD_NAME)"},
        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
    ]
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "data", "mountPath": "/data"},
    ]
    volumes = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
    ]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}}
    probe = pod("probe", PROBE, hostname="probe", subdomain="grp", volumes=volumes,
                container={"env": env, "volumeMounts": mounts})  # fmt: skip
    apply(cm, probe)
    p = wait_pod(core_v1, namespace, "probe", finished)
    assert p.status.phase == "Succeeded", kubectl("logs", "-n", namespace, "probe", check=False).stdout
    t = terminated(p)
    assert (t.exit_code, t.reason) == (0, "Completed")
    ip = p.status.pod_ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/8")
    assert p.status.host_ip == "127.0.0.1"

    out = json.loads((data / "probe.json").read_text())
    assert out["hostname"] == "probe"
    fqdn = f"probe.grp.{namespace}.svc"
    assert {out[n] for n in ("probe", "probe.grp", fqdn, f"{fqdn}.cluster.local")} == {ip}
    assert out["env"] == {
        "POD_NAME": "probe", "POD_IP": ip, "NS": namespace, "APP": "probe", "GREETING": "hello-probe",
        "FROM_CM": "v", "HOSTNAME": "probe",
    }  # fmt: skip
    assert out["fs"]["/dev/shm"] == "tmpfs" and out["shm_bytes"] == 64 << 20
    assert out["fs"]["/scratch"] and out["fs"]["/data"] and out["fs"]["/etc/hosts"]
    assert out["wildcard_bind"] == ip  # a wildcard bind takes the pod's own address only
    # kubectl logs goes apiserver -> the node's log endpoint.
    assert "probe done" in kubectl("logs", "-n", namespace, "probe").stdout


PEER = """
    import os, socket, threading, time
    me, peer, ns = os.environ["ME"], os.environ["PEER"], os.environ["NS"]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 2222))  # both pods: the same port
    srv.listen()
    def serve():
        conn, _ = srv.accept()
        conn.sendall(me.encode())
        conn.close()
    t = threading.Thread(target=serve)
    t.start()
    name = f"{peer}.grp.{ns}.svc"
    deadline = time.time() + 60
    while True:
        try:
            addr = socket.gethostbyname(name)
            with socket.create_connection((addr, 2222), timeout=5) as c:
                print(f"peer {name} at {addr} says {c.recv(100).decode()}", flush=True)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    t.join()
"""


def test_peers_resolve_each_other_and_share_a_port(
    procnode: NodeProcess, core_v1: client.CoreV1Api, namespace: str, apply: Callable[..., None], kubectl: Kubectl
) -> None:
    def peer(me: str, other: str) -> dict[str, Any]:
        env = [{"name": "ME", "value": me}, {"name": "PEER", "value": other}, {"name": "NS", "value": namespace}]
        return pod(me, PEER, hostname=me, subdomain="grp", container={"env": env})

    apply(peer("a", "b"), peer("b", "a"))
    pods = {n: wait_pod(core_v1, namespace, n, finished) for n in ("a", "b")}
    for me, other in (("a", "b"), ("b", "a")):
        log = kubectl("logs", "-n", namespace, me).stdout
        assert pods[me].status.phase == "Succeeded", log
        assert f"at {pods[other].status.pod_ip} says {other}" in log


def test_exit_codes_and_start_errors(
    procnode: NodeProcess, core_v1: client.CoreV1Api, namespace: str, apply: Callable[..., None]
) -> None:
    apply(
        pod("three", "import sys; sys.exit(3)"),
        pod("killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
        pod("nocmd", None),
        pod("missing", None, container={"command": ["no-such-binary-xyz"]}),
    )
    expected = {"three": (3, "Error"), "killed": (137, "Error"), "nocmd": (128, "StartError"),
                "missing": (128, "StartError")}  # fmt: skip
    for name, (code, reason) in expected.items():
        p = wait_pod(core_v1, namespace, name, finished)
        t = terminated(p)
        assert (p.status.phase, t.exit_code, t.reason) == ("Failed", code, reason), name
    assert "no-such-binary-xyz" in terminated(core_v1.read_namespaced_pod("missing", namespace)).message


HANDLER = """
    import signal, sys, time
    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(600)
"""
STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(600)
"""


def test_delete_sends_sigterm_then_sigkill_after_grace_and_finalizes(
    procnode: NodeProcess, core_v1: client.CoreV1Api, namespace: str, apply: Callable[..., None], kubectl: Kubectl
) -> None:
    apply(pod("graceful", HANDLER), pod("stubborn", STUBBORN, terminationGracePeriodSeconds=2))
    pids = {}
    for name in ("graceful", "stubborn"):
        p = wait_pod(core_v1, namespace, name, lambda p: p.status.phase == "Running")
        pids[name] = int(p.status.container_statuses[0].container_id.removeprefix("procnode://"))
        deadline = time.monotonic() + 60
        while "ready" not in procnode.pod_log(namespace, name, "main"):
            assert time.monotonic() < deadline, f"{name} never printed ready"
            time.sleep(0.2)
    kubectl("delete", "pod", "-n", namespace, "graceful", "stubborn", "--wait=false")
    for name in ("graceful", "stubborn"):
        deadline = time.monotonic() + 60
        while True:
            try:
                core_v1.read_namespaced_pod(name, namespace)
            except ApiException as e:
                assert e.status == 404
                break
            assert time.monotonic() < deadline, f"{name} was never finalized"
            time.sleep(0.2)
        assert not Path(f"/proc/{pids[name]}").exists(), f"{name}'s process outlived its pod"
    assert "got SIGTERM" in procnode.pod_log(namespace, "graceful", "main")
    node_log = procnode.log_path.read_text()
    assert f"{namespace}/graceful: container main exited with code 143" in node_log
    assert f"{namespace}/stubborn: grace period over, SIGKILL" in node_log
    assert f"{namespace}/stubborn: container main exited with code 137" in node_log
