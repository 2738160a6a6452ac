"""The pod and Service builders: names, labels, ownership, security and placement defaults."""

from __future__ import annotations

from phalanx.core.gang import Gang
from phalanx.core.pods import build_pod, build_service
from tests.unit.specs import NS, spec


def test_pod_identity_labels_owner_and_dns() -> None:
    pod = build_pod(Gang("bert", NS, "uid-7", spec(replicas=4), 2), 3)
    meta = pod["metadata"]
    # The name carries the attempt (a late delete by name never hits the next attempt's pod); the
    # hostname does not (peers find rank 3 as bert-worker-3.bert in every attempt).
    assert meta["name"] == "bert-a2-worker-3"
    assert build_pod(Gang("bert", NS, "uid-7", spec(replicas=4), 3), 3)["metadata"]["name"] == "bert-a3-worker-3"
    assert meta["labels"] == {
        "phalanx.dev/job-name": "bert",
        "app.kubernetes.io/managed-by": "phalanx",
        "phalanx.dev/role": "worker",
        "phalanx.dev/replica-index": "3",
        "phalanx.dev/attempt": "2",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "phalanx.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "bert",
            "uid": "uid-7",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"]["hostname"] == "bert-worker-3" and pod["spec"]["subdomain"] == "bert"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["schedulingGates"] == [{"name": "phalanx.dev/gang"}]


def test_restricted_pod_security_by_default_and_template_wins() -> None:
    pod = build_pod(Gang("j", NS, "u", spec(), 1), 0)
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["spec"]["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    loose = spec(
        template={
            "spec": {"securityContext": {"runAsNonRoot": False}, "containers": [{"name": "trainer", "image": "i"}]}
        }
    )
    assert build_pod(Gang("j", NS, "u", loose, 1), 0)["spec"]["securityContext"]["runAsNonRoot"] is False


def test_gpu_pod_requests_tolerates_selects_product_and_gets_shm() -> None:
    s = spec(resources={"gpus": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}, scheduling={"priorityClassName": "high"})
    p = build_pod(Gang("j", NS, "u", s, 1), 0)["spec"]
    c = p["containers"][0]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "8" and c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["tolerations"]
    assert p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert p["priorityClassName"] == "high"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in p["volumes"]
    prefs = p["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [t["podAffinityTerm"]["topologyKey"] for t in prefs] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in p["affinity"]["podAffinity"]  # never deadlocks


def test_external_admission_means_no_gate() -> None:
    for scheduling in ({"schedulerName": "volcano"}, {"gang": False}):
        pod = build_pod(Gang("j", NS, "u", spec(scheduling=scheduling), 1), 0)
        assert "schedulingGates" not in pod["spec"], scheduling


def test_kueue_jobs_pods_are_gated_until_kueue_admits_the_gang() -> None:
    for scheduling in ({"queueName": "team-a"}, {"queueName": "team-a", "gang": False}):
        pod = build_pod(Gang("j", NS, "u", spec(scheduling=scheduling), 1), 0)
        assert pod["spec"]["schedulingGates"] == [{"name": "phalanx.dev/gang"}], scheduling


def test_headless_service_publishes_not_ready_addresses() -> None:
    svc = build_service(Gang("j", NS, "u", spec("tensorflow"), 1))
    assert svc["metadata"]["name"] == "j"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"phalanx.dev/job-name": "j"}
    assert svc["spec"]["ports"] == [{"name": "tf-grpc", "port": 2222, "targetPort": 2222, "protocol": "TCP"}]


def test_sidecars_and_init_containers_get_the_restricted_defaults_unless_they_set_their_own() -> None:
    template = {
        "spec": {
            "initContainers": [{"name": "fetch", "image": "i"}],
            "containers": [
                {"name": "trainer", "image": "i"},
                {"name": "logs", "image": "i"},
                {"name": "net", "image": "i", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
                {"name": "debug", "image": "i", "securityContext": {"privileged": True}},
            ],
        }
    }
    built = build_pod(Gang("j", NS, "u", spec(template=template), 1), 0)["spec"]
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    contexts = {c["name"]: c["securityContext"] for c in [*built["initContainers"], *built["containers"]]}
    assert contexts["fetch"] == contexts["logs"] == contexts["trainer"] == restricted
    assert contexts["net"] == {"allowPrivilegeEscalation": False, "capabilities": {"add": ["NET_ADMIN"]}}
    # privileged with allowPrivilegeEscalation=false is refused by the apiserver: the default is left out.
    assert contexts["debug"] == {"privileged": True, "capabilities": {"drop": ["ALL"]}}


def test_a_pod_admitted_at_creation_has_no_gate_and_prefers_its_planned_node() -> None:
    from phalanx.core.pods import PREFERRED, admitted_pod

    gated_pod = {"kind": "Pod", "spec": {"schedulingGates": [{"name": "g"}], "affinity": {"podAffinity": {"x": 1}}}}
    pod = admitted_pod(gated_pod, "node-7")
    assert "schedulingGates" not in pod["spec"]
    assert pod["spec"]["affinity"]["podAffinity"] == {"x": 1}
    term = pod["spec"]["affinity"]["nodeAffinity"][PREFERRED][-1]
    assert term["preference"]["matchFields"][0]["values"] == ["node-7"]
    assert (
        gated_pod["spec"]["schedulingGates"] == [{"name": "g"}] and "nodeAffinity" not in gated_pod["spec"]["affinity"]
    )
