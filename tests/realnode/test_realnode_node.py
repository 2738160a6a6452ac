"""The real node itself: registration, the pod network, cluster DNS, the `kubernetes` Service, and the
kubelet's own checks (runAsNonRoot, memory limits), each seen from inside a real container."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from localcluster import images, realnode
from localcluster.profiles import POOL_LABEL
from localcluster.testing import Kubectl
from tests.realnode.conftest import RealNode, pod_manifest, run_pod, wait_for

pytestmark = pytest.mark.realnode

OPERATOR_IMAGE = images.images("cpu")[0].ref

# Run in the operator image: what an in-cluster client sees. Names outside the cluster domain must
# fail locally (CoreDNS answers NXDOMAIN itself), and the only routes are the bridge and Services.
PROBE = r"""
import json, os, socket
from kubernetes import client, config
out = {"service": socket.gethostbyname("kubernetes.default.svc.cluster.local")}
try:
    socket.gethostbyname("example.com")
    out["outside"] = "resolved"
except socket.gaierror as e:
    out["outside"] = e.errno
rows = [line.split() for line in open("/proc/net/route").read().splitlines()[1:]]
def cidr(dest, mask):
    return socket.inet_ntoa(bytes.fromhex(dest)[::-1]) + "/" + str(bin(int(mask, 16)).count("1"))
out["routes"] = sorted(cidr(r[1], r[7]) for r in rows)
config.load_incluster_config()  # KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount token, as everywhere
out["host"] = client.Configuration.get_default_copy().host
out["version"] = client.VersionApi().get_code().git_version
out["user"] = os.getuid()
print(json.dumps(out))
"""


def test_the_real_node_registers_next_to_the_kwok_nodes(node: RealNode, core_v1: client.CoreV1Api) -> None:
    real = core_v1.read_node(realnode.NODE_NAME)
    assert {c.type: c.status for c in real.status.conditions}["Ready"] == "True"
    assert real.metadata.labels[realnode.NODE_LABEL] == realnode.NODE_LABEL_VALUE
    assert [(t.key, t.effect) for t in real.spec.taints or []] == [(realnode.TAINT_KEY, "NoSchedule")]
    assert [(a.type, a.address) for a in real.status.addresses if a.type == "InternalIP"] == [
        ("InternalIP", realnode.GATEWAY)
    ]
    assert real.status.node_info.container_runtime_version.startswith("containerd://")
    simulated = core_v1.list_node(label_selector=POOL_LABEL).items
    assert len(simulated) == 7, "the kwok nodes of the profile are missing"
    assert all(n.metadata.annotations.get("kwok.x-k8s.io/node") == "fake" for n in simulated)


def test_pods_get_cluster_dns_the_kubernetes_service_and_no_route_off_the_machine(
    node: RealNode, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "rolebinding", "view", "--clusterrole=view", f"--serviceaccount={namespace}:default",
            "-n", namespace)  # fmt: skip
    phase, log = run_pod(kubectl, namespace, "probe", OPERATOR_IMAGE, ["python", "-c", PROBE])
    assert phase == "Succeeded", log
    out = json.loads(log.strip().splitlines()[-1])
    assert out["service"] == realnode.KUBERNETES_SERVICE_IP
    assert out["outside"] == -2, out  # EAI_NONAME: NXDOMAIN from the cluster DNS, nothing asked upstream
    assert out["routes"] == ["10.244.0.0/24", "10.96.0.0/16"], out
    assert out["host"] == f"https://{realnode.KUBERNETES_SERVICE_IP}:443"
    assert out["version"].startswith("v1.36"), out
    assert out["user"] == 65532


def test_the_simulated_nodes_and_pods_addresses_cannot_be_dialled_off_the_machine(node: RealNode) -> None:
    import subprocess

    for address in ("10.128.0.5", "10.64.3.4"):  # a kwok node's InternalIP, a kwok pod's IP
        route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
        assert route.returncode != 0 or route.stdout.startswith("blackhole"), route.stdout


def test_a_root_image_is_refused_under_run_as_non_root_naming_the_cause(
    node: RealNode, kubectl: Kubectl, core_v1: client.CoreV1Api, namespace: str
) -> None:
    base = images.base_ref()  # Debian's python3, which runs as root
    assert realnode.load_image(node.paths, base, log=print)
    kubectl("apply", "-f", "-", input=json.dumps(pod_manifest(namespace, "root", base, ["python", "-c", "print(1)"])))

    def waiting() -> str | None:
        statuses = core_v1.read_namespaced_pod("root", namespace).status.container_statuses or []
        w = statuses[0].state.waiting if statuses else None
        return f"{w.reason}: {w.message}" if w and w.reason == "CreateContainerConfigError" else None

    cause = wait_for("the kubelet's refusal", waiting, timeout=60)
    assert "container has runAsNonRoot and image will run as root" in cause, cause


def test_a_container_over_its_memory_limit_is_oom_killed(node: RealNode, kubectl: Kubectl, namespace: str) -> None:
    hog = "b = bytearray(256 * 1024 * 1024); print('allocated', len(b))"
    limits = {"limits": {"memory": "64Mi"}}
    phase, _ = run_pod(kubectl, namespace, "hog", OPERATOR_IMAGE, ["python", "-c", hog], resources=limits)
    assert phase == "Failed"
    state = json.loads(kubectl("get", "pod", "-n", namespace, "hog", "-o", "json").stdout)
    terminated = state["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137), terminated
