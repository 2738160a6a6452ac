"""Fast tests of dev/localcluster without a cluster: profiles, manifests, versions, CLI errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

_DEV = Path(__file__).resolve().parents[2] / "dev"
if str(_DEV) not in sys.path:
    sys.path.insert(0, str(_DEV))

from localcluster import binaries, components, sim, stages  # noqa: E402
from localcluster import pki as pkimod  # noqa: E402
from localcluster.__main__ import main  # noqa: E402
from localcluster.errors import BinariesMissing, ClusterError  # noqa: E402
from localcluster.layout import Layout  # noqa: E402
from localcluster.nodes import is_ready, node_manifest, profile_manifests  # noqa: E402
from localcluster.profiles import NODES_ENV, available_profiles, load_profile, parse_profile  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POOL: dict[str, Any] = {"name": "p", "count": 2, "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"}}


def doc(**pool: Any) -> dict[str, Any]:
    return {"pools": [{**POOL, **pool}]}


# -- profiles -------------------------------------------------------------------------------------


def test_default_profile_declares_gpu_cpu_and_tpu_pools() -> None:
    prof = load_profile("default")
    pools = {p.name: p for p in prof.pools}
    gpu, cpu, tpu = pools["gpu-h100"], pools["cpu"], pools["tpu-v5e"]
    assert gpu.count == 4 and gpu.capacity["nvidia.com/gpu"] == "8"
    assert gpu.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert gpu.labels["nvidia.com/gpu.count"] == "8" and gpu.labels["nvidia.com/gpu.present"] == "true"
    assert [(t.key, t.value, t.effect) for t in gpu.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
    assert cpu.count == 1 and not cpu.taints and "nvidia.com/gpu" not in cpu.capacity
    assert tpu.count == 2 and tpu.capacity["google.com/tpu"] == "4"
    assert tpu.labels["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    assert tpu.labels["cloud.google.com/gke-tpu-topology"] == "2x4"
    assert [(t.key, t.effect) for t in tpu.taints] == [("google.com/tpu", "NoSchedule")]
    # defaults are merged under each pool, the pool's own keys win
    assert gpu.capacity["cpu"] == "96" and cpu.capacity["cpu"] == "32" and gpu.capacity["pods"] == "110"
    assert len(prof.node_names()) == 7


def test_scale_profile_defaults_to_1000_and_resizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NODES_ENV, raising=False)
    assert len(load_profile("scale").node_names()) == 1000
    assert len(load_profile("scale", nodes=200).node_names()) == 200
    monkeypatch.setenv(NODES_ENV, "30")
    assert len(load_profile("scale").node_names()) == 30
    assert len(load_profile("scale", nodes=5).node_names()) == 5  # the flag beats the environment


def test_every_shipped_profile_parses() -> None:
    assert {"default", "scale"} <= set(available_profiles())
    for name in available_profiles():
        assert load_profile(name, nodes=3 if name == "scale" else None).pools


def test_default_and_real_profiles_turn_native_gang_scheduling_on(tmp_path: Path) -> None:
    """The gates reach every component that reads them, and the apiserver serves the alpha API."""
    for name in ("default", "real", "scale"):
        prof = load_profile(name)
        assert prof.feature_gates == {"GenericWorkload": True, "GangScheduling": True}
        assert prof.runtime_config == ("scheduling.k8s.io/v1alpha2",)
    prof = load_profile("default")
    bins = {c: tmp_path / c for c in components.ORDER}
    ports = dict.fromkeys(components.PORT_NAMES, 1)
    plan = components.Plan(Layout(tmp_path), pkimod.Pki(tmp_path), ports, tmp_path, bins, 7,
                           prof.feature_gates, prof.runtime_config)  # fmt: skip
    gates = "--feature-gates=GangScheduling=true,GenericWorkload=true"
    for component in ("kube-apiserver", "kube-scheduler", "kube-controller-manager"):
        assert gates in components.argv(plan, component), component
    assert "--runtime-config=scheduling.k8s.io/v1alpha2=true" in components.argv(plan, "kube-apiserver")
    assert load_profile("stock").feature_gates == {} and load_profile("stock").runtime_config == ()
    bare = components.Plan(Layout(tmp_path), pkimod.Pki(tmp_path), ports, tmp_path, bins, 7)
    assert not [a for a in components.argv(bare, "kube-apiserver") if a.startswith(("--feature", "--runtime"))]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"featureGates": ["GangScheduling"]}, "'featureGates' must map gate names"),
        ({"featureGates": {"GangScheduling": "yes"}}, "featureGates GangScheduling must be true or false"),
        ({"runtimeConfig": "scheduling.k8s.io/v1alpha2"}, "'runtimeConfig' must list API versions"),
    ],
)
def test_bad_feature_gates_and_runtime_config_are_named(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        parse_profile("x", {**doc(), **extra})


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ClusterError, match=r"unknown profile 'nope'; choose one of: default, real, scale, stock"):
        load_profile("nope")
    with pytest.raises(ClusterError, match="unknown profile"):
        load_profile("../etc/passwd")


def test_nodes_flag_needs_a_scalable_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NODES_ENV, raising=False)
    with pytest.raises(ClusterError, match="no 'scalable: true' pool"):
        load_profile("default", nodes=3)
    monkeypatch.setenv(NODES_ENV, "many")
    with pytest.raises(ClusterError, match=f"{NODES_ENV} must be an integer"):
        load_profile("scale")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a mapping"),
        ({"pools": []}, "non-empty list"),
        ({"pools": [POOL], "extra": 1}, r"unknown field\(s\) extra"),
        (doc(gpus=8), r"pool 'p': unknown field\(s\) gpus"),
        (doc(name="Bad_Name"), "lowercase DNS label"),
        (doc(count="two"), "'count' must be an integer"),
        (doc(count=-1), "must be >= 0"),
        (doc(capacity={"cpu": "8"}), "capacity lacks memory, pods"),
        (doc(capacity={**POOL["capacity"], "nvidia.com/gpu": "eight"}), "not a Kubernetes quantity"),
        (doc(taints=[{"key": "k", "effect": "NoRun"}]), "effect 'NoRun'"),
        (doc(taints=["k=v:NoSchedule"]), "each taint needs key"),
        (doc(labels={"bad key!": "x"}), "not a valid Kubernetes label"),
        (doc(zones=[]), "'zones' must be a non-empty list"),
        (doc(scalable="yes"), "'scalable' must be true or false"),
        ({"pools": [POOL, POOL]}, "duplicate pool name"),
        ({"pools": [{**POOL, "scalable": True}, {**POOL, "name": "q", "scalable": True}]}, "only one pool"),
    ],
)
def test_bad_profiles_fail_with_one_line_naming_the_field(document: Any, message: str) -> None:
    with pytest.raises(ClusterError, match=message) as err:
        parse_profile("t", document)
    assert "\n" not in str(err.value)


def test_yaml_scalars_become_label_strings() -> None:
    prof = parse_profile("t", doc(labels={"a/count": 8, "a/present": True}))
    assert dict(prof.pools[0].labels) == {"a/count": "8", "a/present": "true"}


# -- node manifests -------------------------------------------------------------------------------


def test_node_manifest_is_kwok_managed_with_status_and_taints() -> None:
    pool = load_profile("default").pools[0]
    node = node_manifest(pool, 1, serial=2)
    assert node["metadata"]["name"] == "gpu-h100-1"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "gpu-h100-1"
    assert labels["topology.kubernetes.io/zone"] == "us-central1-b"  # round robin over the zones
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def test_profile_nodes_get_distinct_addresses() -> None:
    manifests = profile_manifests(load_profile("scale", nodes=1000))
    ips = {m["status"]["addresses"][0]["address"] for m in manifests}
    assert len(ips) == 1000


def test_is_ready_needs_condition_and_no_not_ready_taint() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert is_ready(ready)
    assert not is_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    tainted = {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}
    assert not is_ready(tainted)


# -- versions and binaries ------------------------------------------------------------------------


def test_versions_file_is_shared_with_build_script(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = binaries.parse_versions((REPO / "dev" / "versions.env").read_text())
    assert set(pinned) == {
        "K8S_VERSION",
        "ETCD_VERSION",
        "KWOK_VERSION",
        "HELM_VERSION",
        "COREDNS_VERSION",
        "PAUSE_VERSION",
        "KUEUE_VERSION",
    }
    assert "versions.env" in (REPO / "dev" / "build-binaries.sh").read_text()
    monkeypatch.setenv("PHALANX_CACHE", "/cache")
    monkeypatch.setenv("K8S_VERSION", "v9.9.9")
    assert binaries.binary("kube-apiserver") == Path("/cache/bin/kube-apiserver-v9.9.9")
    monkeypatch.delenv("K8S_VERSION")
    assert binaries.kubectl() == Path(f"/cache/bin/kubectl-{pinned['K8S_VERSION']}")


def test_bad_versions_line_is_reported() -> None:
    with pytest.raises(ClusterError, match="expected KEY=value"):
        binaries.parse_versions("K8S_VERSION v1\n")


def test_missing_binaries_say_make_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHALANX_CACHE", str(tmp_path))
    with pytest.raises(BinariesMissing, match="run `make binaries`"):
        binaries.require()


# -- kwok stages ----------------------------------------------------------------------------------


def test_outcome_stages_select_on_annotations_and_outweigh_stock_completion() -> None:
    docs = list(yaml.safe_load_all((stages.OWN_STAGES_DIR / "sim-outcome.yaml").read_text()))
    by_name = {d["metadata"]["name"]: d["spec"] for d in docs}
    for name, outcome in (("phalanx-sim-succeed", "succeed"), ("phalanx-sim-fail", "fail")):
        spec = by_name[name]
        exprs = {e["key"]: e.get("values") for e in spec["selector"]["matchExpressions"]}
        assert exprs[f'.metadata.annotations["{sim.OUTCOME}"]'] == [outcome]
        assert exprs[".status.phase"] == ["Running"]
        assert spec["weight"] > 0
        assert spec["delay"]["durationFrom"]["expressionFrom"] == f'.metadata.annotations["{sim.DELAY}"]'
    assert f'"{sim.EXIT_CODE}"' in by_name["phalanx-sim-fail"]["next"]["statusTemplate"]


def test_stock_stages_come_from_the_kwok_module() -> None:
    module = stages.kwok_module_dir()
    assert module.name == f"kwok@{binaries.version_of('kwok')}"
    names = [d["metadata"]["name"] for text in stages.stage_documents(module) for d in yaml.safe_load_all(text)]
    assert {"node-initialize", "pod-ready", "pod-complete", "pod-delete", "phalanx-sim-fail"} <= set(names)


def test_outcome_annotations_validate_input() -> None:
    ann = sim.outcome_annotations(sim.FAIL, exit_code=137, reason="OOMKilled", delay="2s")
    assert ann == {sim.OUTCOME: "fail", sim.EXIT_CODE: "137", sim.REASON: "OOMKilled", sim.DELAY: "2s"}
    assert sim.outcome_annotations(sim.SUCCEED) == {sim.OUTCOME: "succeed", sim.DELAY: "0s"}
    for bad in ("2", "2 s", "soon", ""):
        with pytest.raises(ValueError, match="Go duration"):
            sim.outcome_annotations(sim.SUCCEED, delay=bad)
    for code in (-1, 256, True):
        with pytest.raises(ValueError, match="exit_code"):
            sim.outcome_annotations(sim.FAIL, exit_code=code)
    with pytest.raises(ValueError, match="outcome"):
        sim.outcome_annotations("crash")


# -- CLI, state dir, build script -----------------------------------------------------------------


def test_cli_unknown_profile_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--profile", "nope", "--dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown profile 'nope'") and err.count("\n") == 1
    assert not (tmp_path / "c").exists()  # nothing touched


def test_cli_missing_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PHALANX_CACHE", str(tmp_path / "empty"))
    assert main(["up", "--dir", str(tmp_path / "c")]) == 1
    assert "make binaries" in capsys.readouterr().err


def test_cli_status_and_down_without_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--dir", str(tmp_path)]) == 1
    assert "no cluster in" in capsys.readouterr().out
    assert main(["down", "--dir", str(tmp_path)]) == 0


def test_foreign_non_empty_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(ClusterError, match="not created by localcluster"):
        Layout(tmp_path).claim()


def test_kubeconfig_points_at_ip_not_localhost(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    cfg = components.kubeconfig(6443, f, f, f, "u", embed=True)
    assert cfg["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"


def test_build_script_without_go_says_what_to_install(tmp_path: Path) -> None:
    # A PATH holding only the tools the script needs before it looks for Go (Go may live in /usr/bin).
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname", "mkdir", "date"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed by this test"
        (tools / tool).symlink_to(found)
    env = {"PATH": str(tools), "HOME": str(tmp_path), "PHALANX_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(
        [str(tools / "bash"), str(REPO / "dev" / "build-binaries.sh"), "etcd"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0
    assert "Go is not installed" in res.stderr and "Go >= 1.26" in res.stderr


# -- Kueue (localcluster/kueue.py), from the module's own manifests -------------------------------


def test_kueue_manifests_point_at_loopback_and_keep_only_its_own_and_job_webhooks(tmp_path: Path) -> None:
    from localcluster import kueue

    module = kueue.module_dir()
    url = "https://127.0.0.1:4321"
    hooks = kueue.webhook_configurations(module, url, "Q0E=")
    assert [d["metadata"]["name"] for d in hooks] == [
        "kueue-mutating-webhook-configuration",
        "kueue-validating-webhook-configuration",
    ]
    every = [h for d in hooks for h in d["webhooks"]]
    assert {"vclusterqueue.kb.io", "mworkload.kb.io", "vjob.kb.io"} <= {h["name"] for h in every}
    assert not {"mpod.kb.io", "vpod.kb.io", "mdeployment.kb.io"} & {h["name"] for h in every}
    for h in every:
        assert h["clientConfig"]["url"].startswith(url + "/") and h["clientConfig"]["caBundle"] == "Q0E="
    crds = {d["metadata"]["name"]: d for d in kueue.crds(module, url, "Q0E=")}
    conversion = crds["workloads.kueue.x-k8s.io"]["spec"]["conversion"]["webhook"]["clientConfig"]
    assert conversion == {"url": url + "/convert", "caBundle": "Q0E="}
    cfg = kueue.configuration(module, {"kueue-webhook": 4321, "kueue-health": 4322}, tmp_path)
    assert cfg["webhook"] == {"port": 4321, "host": "127.0.0.1", "certDir": str(tmp_path)}
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["integrations"]["externalFrameworks"] == ["TrainingJob.v1alpha1.phalanx.dev"]
    assert cfg["waitForPodsReady"] == {"timeout": "30s", "blockAdmission": False}  # Kueue's default is 30m
    longer = kueue.configuration(module, {"kueue-webhook": 1, "kueue-health": 2}, tmp_path, "3m")
    assert longer["waitForPodsReady"]["timeout"] == "3m"


def test_kueue_pods_ready_timeout_is_a_go_duration() -> None:
    from localcluster import kueue
    from localcluster.errors import ClusterError

    assert [kueue.duration_seconds(v) for v in ("30s", "3m", "1m30s", "1.5h", "500ms")] == [30, 180, 90, 5400, 0.5]
    for bad in ("", "30", "thirty", "3 m", "-5s", "1d"):
        with pytest.raises(ClusterError, match="not a Go duration"):
            kueue.duration_seconds(bad)
