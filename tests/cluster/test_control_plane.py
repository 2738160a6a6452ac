"""The local control plane behaves like a real cluster where our operator depends on it: scheduling of
extended resources and taints, kwok pod lifecycle incl. chosen failures, garbage collection, RBAC,
PodSecurity admission."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import localcluster
from localcluster import binaries, process, sim
from localcluster.components import PORT_NAMES
from localcluster.nodes import add_nodes, delete_nodes, gpu_pool, is_ready
from localcluster.ports import pick_free_ports
from localcluster.profiles import load_profile
from localcluster.testing import Kubectl, create_namespace, unique_namespace_name, wait_for

pytestmark = pytest.mark.cluster

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod(
    name: str,
    gpus: int = 0,
    tolerate_gpu: bool = False,
    annotations: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.invalid/trainer:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    meta: dict[str, Any] = {"name": name, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if tolerate_gpu:
        spec["tolerations"] = [GPU_TOLERATION]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def wait_phase(core_v1: client.CoreV1Api, ns: str, name: str, phase: str, timeout: float = 30) -> client.V1Pod:
    def check() -> client.V1Pod | None:
        p = core_v1.read_namespaced_pod(name, ns)
        return p if p.status.phase == phase else None

    result: client.V1Pod = wait_for(check, timeout=timeout, what=f"pod {ns}/{name} phase {phase}")
    return result


def node_dict(core_v1: client.CoreV1Api, node: client.V1Node) -> dict[str, Any]:
    data: dict[str, Any] = core_v1.api_client.sanitize_for_serialization(node)
    return data


def test_profile_nodes_ready_with_declared_capacity(core_v1: client.CoreV1Api) -> None:
    profile = load_profile("default")
    by_name = {n.metadata.name: n for n in core_v1.list_node().items}
    for pool in profile.pools:
        for name in pool.node_names():
            node = by_name[name]
            assert is_ready(node_dict(core_v1, node)), name
            for resource, quantity in pool.capacity.items():
                assert node.status.capacity[resource] == quantity, (name, resource)
                assert node.status.allocatable[resource] == quantity, (name, resource)
            assert node.metadata.labels["kubernetes.io/hostname"] == name
            assert node.metadata.labels["topology.kubernetes.io/zone"] in pool.zones
    gpu = by_name["gpu-h100-0"]
    assert gpu.status.capacity["nvidia.com/gpu"] == "8"
    assert gpu.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert [(t.key, t.value, t.effect) for t in gpu.spec.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
    tpu = by_name["tpu-v5e-0"]
    assert tpu.status.capacity["google.com/tpu"] == "4"
    assert tpu.metadata.labels["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    assert tpu.metadata.labels["cloud.google.com/gke-tpu-topology"] == "2x4"
    assert [(t.key, t.effect) for t in tpu.spec.taints] == [("google.com/tpu", "NoSchedule")]
    assert "nvidia.com/gpu" not in by_name["cpu-0"].status.capacity


def test_eight_gpus_with_toleration_bind_to_a_gpu_node(core_v1: client.CoreV1Api, namespace: str) -> None:
    core_v1.create_namespaced_pod(namespace, pod("eight", gpus=8, tolerate_gpu=True))
    running = wait_phase(core_v1, namespace, "eight", "Running")
    assert running.spec.node_name.startswith("gpu-h100-")
    assert running.status.host_ip and running.status.pod_ip


def test_nine_gpus_stay_pending_unschedulable(core_v1: client.CoreV1Api, namespace: str) -> None:
    core_v1.create_namespaced_pod(namespace, pod("nine", gpus=9, tolerate_gpu=True))

    def unschedulable() -> client.V1PodCondition | None:
        conds = core_v1.read_namespaced_pod("nine", namespace).status.conditions or []
        return next((c for c in conds if c.type == "PodScheduled" and c.status == "False"), None)

    cond = wait_for(unschedulable, what="PodScheduled=False")
    assert cond.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond.message
    p = core_v1.read_namespaced_pod("nine", namespace)
    assert p.status.phase == "Pending" and not p.spec.node_name


def test_pods_without_toleration_never_land_on_gpu_or_tpu_nodes(core_v1: client.CoreV1Api, namespace: str) -> None:
    names = [f"plain-{i}" for i in range(6)]
    for name in names:
        core_v1.create_namespaced_pod(namespace, pod(name))
    nodes = {wait_phase(core_v1, namespace, n, "Running").spec.node_name for n in names}
    assert nodes == {"cpu-0"}


def test_pod_made_to_fail_reports_exit_code_and_reason(
    core_v1: client.CoreV1Api, namespace: str, kubectl: Kubectl
) -> None:
    core_v1.create_namespaced_pod(namespace, pod("oom", gpus=1, tolerate_gpu=True))
    wait_phase(core_v1, namespace, "oom", "Running")
    sim.make_pod_fail(core_v1, namespace, "oom", exit_code=137, reason="OOMKilled", delay="500ms")
    wait_phase(core_v1, namespace, "oom", "Failed")
    # Read the raw JSON: the exit code must be a JSON integer, not a string the client coerced.
    raw = json.loads(kubectl("get", "pod", "oom", "-n", namespace, "-o", "json").stdout)
    terminated = raw["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 137 and isinstance(terminated["exitCode"], int)
    assert terminated["reason"] == "OOMKilled"
    ready = next(c for c in raw["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def test_outcome_annotations_on_creation_end_pod_after_delay(core_v1: client.CoreV1Api, namespace: str) -> None:
    ok = sim.outcome_annotations(sim.SUCCEED, delay="1s")
    bad = sim.outcome_annotations(sim.FAIL, exit_code=3, reason="Error")
    core_v1.create_namespaced_pod(namespace, pod("ok", annotations=ok))
    core_v1.create_namespaced_pod(namespace, pod("bad", annotations=bad))
    done = wait_phase(core_v1, namespace, "ok", "Succeeded")
    term = done.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (0, "Completed")
    failed = wait_phase(core_v1, namespace, "bad", "Failed")
    assert failed.status.container_statuses[0].state.terminated.exit_code == 3


def test_held_pod_stays_container_creating_until_released(core_v1: client.CoreV1Api, namespace: str) -> None:
    core_v1.create_namespaced_pod(namespace, pod("held", annotations=sim.hold_annotations()))

    def waiting() -> client.V1Pod | None:
        p = core_v1.read_namespaced_pod("held", namespace)
        statuses = p.status.container_statuses or []
        return p if statuses and statuses[0].state.waiting else None

    held = wait_for(waiting, timeout=30, what="held's container waiting")
    assert held.spec.node_name and held.status.phase == "Pending"
    assert held.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    ready = next(c for c in held.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ContainersNotReady")
    # kwok plays the Stage again on every change of the pod: it renders the same status, so nothing is
    # written and the pod stays as it is (no rewrite loop).
    labelled = core_v1.patch_namespaced_pod("held", namespace, {"metadata": {"labels": {"looked-at": "yes"}}})
    time.sleep(3)
    again = core_v1.read_namespaced_pod("held", namespace)
    assert again.status.phase == "Pending" and again.status.container_statuses[0].state.waiting
    assert again.metadata.resource_version == labelled.metadata.resource_version, "written again after the label"

    sim.release_pod(core_v1, namespace, "held")
    started = wait_phase(core_v1, namespace, "held", "Running")
    assert next(c for c in started.status.conditions if c.type == "Ready").status == "True"


def test_running_pod_made_to_succeed(core_v1: client.CoreV1Api, namespace: str) -> None:
    core_v1.create_namespaced_pod(namespace, pod("worker"))
    wait_phase(core_v1, namespace, "worker", "Running")
    sim.make_pod_succeed(core_v1, namespace, "worker")
    done = wait_phase(core_v1, namespace, "worker", "Succeeded")
    assert done.status.container_statuses[0].state.terminated.exit_code == 0


def test_deleting_owner_garbage_collects_pods(core_v1: client.CoreV1Api, namespace: str) -> None:
    owner = core_v1.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(3):
        core_v1.create_namespaced_pod(namespace, pod(f"owned-{i}", owner=ref))
    for i in range(3):
        wait_phase(core_v1, namespace, f"owned-{i}", "Running")
    core_v1.delete_namespaced_config_map("owner", namespace)
    wait_for(lambda: not core_v1.list_namespaced_pod(namespace).items, timeout=60, what="owned pods to be collected")


def test_service_account_without_role_is_denied_by_rbac(
    api_client: client.ApiClient, core_v1: client.CoreV1Api, namespace: str
) -> None:
    core_v1.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core_v1.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    cfg = client.Configuration()
    cfg.host = api_client.configuration.host
    cfg.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(cfg) as sa_client:
        as_sa = client.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as denied:
            as_sa.list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body
        # And RBAC really grants: bind a Role, then the same call succeeds.
        rbac = client.RbacAuthorizationV1Api(api_client)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                as_sa.list_namespaced_pod(namespace)
                return True
            except ApiException:
                return False

        wait_for(allowed, timeout=10, what="RoleBinding to take effect")


def test_privileged_pod_rejected_in_restricted_namespace(core_v1: client.CoreV1Api) -> None:
    ns = create_namespace(
        core_v1, unique_namespace_name("restricted"), labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    try:
        privileged = pod("root")
        privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
        with pytest.raises(ApiException) as rejected:
            core_v1.create_namespaced_pod(ns, privileged)
        assert rejected.value.status == 403
        assert "violates PodSecurity" in rejected.value.body and "privileged" in rejected.value.body
    finally:
        core_v1.delete_namespace(ns)


def test_tests_can_add_nodes_of_another_gpu_product(core_v1: client.CoreV1Api, namespace: str) -> None:
    names = add_nodes(core_v1, gpu_pool("a100", count=1, product="NVIDIA-A100-SXM4-80GB"))
    try:
        selector = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        core_v1.create_namespaced_pod(namespace, pod("on-a100", gpus=8, tolerate_gpu=True, node_selector=selector))
        assert wait_phase(core_v1, namespace, "on-a100", "Running").spec.node_name == "a100-0"
        core_v1.delete_namespaced_pod("on-a100", namespace)
    finally:
        delete_nodes(core_v1, names)


# -- lifecycle and faults of the control plane itself (each starts its own small cluster) ----------


def _require_binaries() -> None:
    # These tests start their own clusters: say plainly what is missing rather than fail an assertion.
    try:
        binaries.require()
    except localcluster.ClusterError as e:
        pytest.fail(str(e), pytrace=False)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions text (every component's args name its state dir)."""
    return process.cmdline_mentions(text)


def test_up_twice_reuses_and_a_half_dead_cluster_is_replaced(tmp_path: Path) -> None:
    _require_binaries()
    state_dir = tmp_path / "c"
    first = localcluster.up("default", state_dir, die_with_parent=True, log=lambda _: None)
    try:
        again = localcluster.up("default", state_dir, die_with_parent=True, log=lambda _: None)
        assert again.reused and again.pids == first.pids
        with pytest.raises(localcluster.ClusterError, match="already runs"):
            localcluster.up("scale", state_dir, nodes=2, log=lambda _: None)
        os.kill(first.pids["kwok"], signal.SIGKILL)
        wait_for(lambda: not process.alive(first.pids["kwok"]), what="kwok to die")
        ok, text = localcluster.status(state_dir)
        assert not ok and "DEAD" in text
        lines: list[str] = []
        fresh = localcluster.up("default", state_dir, die_with_parent=True, log=lines.append)
        assert "stale cluster" in lines[0] and "kwok" in lines[0]
        assert not fresh.reused
        assert not any(process.alive(pid) for pid in first.pids.values())
        assert localcluster.status(state_dir)[0]
    finally:
        localcluster.down(state_dir, log=lambda _: None)
    assert _processes_mentioning(str(state_dir)) == []


def test_port_grabbed_between_pick_and_start_names_component_and_log(tmp_path: Path) -> None:
    _require_binaries()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]

        def picker(n: int) -> list[int]:
            ports = pick_free_ports(n)
            ports[PORT_NAMES.index("kube-apiserver")] = taken
            return ports

        with pytest.raises(localcluster.ClusterError) as err:
            localcluster.up("default", tmp_path / "c", die_with_parent=True, port_picker=picker, log=lambda _: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"kube-apiserver could not listen on 127.0.0.1:{taken}" in msg and "address already in use" in msg
    assert str(tmp_path / "c" / "logs" / "kube-apiserver.log") in msg
    assert _processes_mentioning(str(tmp_path)) == []


def test_binary_failing_to_start_points_at_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_binaries()
    fake_bin = tmp_path / "cache" / "bin"
    fake_bin.mkdir(parents=True)
    for name in binaries.CONTROL_PLANE:
        real = binaries.binary(name)
        (fake_bin / real.name).symlink_to(real)
    broken = fake_bin / binaries.binary("kube-scheduler").name
    broken.unlink()
    broken.write_text("#!/bin/sh\necho 'fatal: simulated scheduler crash' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PHALANX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(localcluster.ClusterError) as err:
        localcluster.up("default", tmp_path / "c", die_with_parent=True, log=lambda _: None)
    msg = str(err.value)
    assert "kube-scheduler exited with code 3" in msg and "simulated scheduler crash" in msg
    assert str(tmp_path / "c" / "logs" / "kube-scheduler.log") in msg
    assert _processes_mentioning(str(tmp_path)) == []
    assert not (tmp_path / "c" / "cluster.json").exists()
