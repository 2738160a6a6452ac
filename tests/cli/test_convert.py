"""`kubectl phalanx convert` on Kubeflow manifests written after Kubeflow's documented examples
(tests/cli/kubeflow/): what maps, what is listed as not mapped and why, and what is refused. Pure:
the cluster test (test_cli_cluster.py) applies the same outputs to the real apiserver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from phalanx.cli.convert import Conversion, convert
from phalanx.cli.errors import CliError
from tests.cli.runner import cli

KUBEFLOW = Path(__file__).parent / "kubeflow"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KUBEFLOW / name).read_text())
    return doc


def noted(result: Conversion) -> dict[str, str]:
    return dict(result.notes)


def test_master_and_workers_become_one_gang_with_kubeflows_container_as_trainer() -> None:
    result = convert(load("pytorch-simple.yaml"))
    job = result.job
    assert job["apiVersion"] == "phalanx.dev/v1alpha1" and job["kind"] == "TrainingJob"
    assert job["metadata"] == {"name": "pytorch-simple", "namespace": "kubeflow"}
    spec = job["spec"]
    assert spec["framework"] == "pytorch" and spec["replicas"] == 2  # 1 Master + 1 Worker
    [container] = spec["template"]["spec"]["containers"]
    assert container["name"] == "trainer"
    assert container["command"] == ["python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1"]
    assert container["image"] == "docker.io/kubeflowkatib/pytorch-mnist:v1beta1-45c5727"
    assert spec["runPolicy"] == {"restartOn": "always"}  # OnFailure
    assert "procsPerPod" not in spec and "resources" not in spec
    assert result.notes == []  # identical Master and Worker templates: nothing lost
    assert any("OnFailure" in c and "whole gang" in c for c in result.changes)


def test_gpus_nproc_per_node_run_policy_priority_and_kueue_queue_map_across() -> None:
    result = convert(load("pytorch-gpu.yaml"))
    spec = result.job["spec"]
    assert spec["replicas"] == 3 and spec["procsPerPod"] == 4
    assert spec["resources"] == {"gpus": 4}
    container = spec["template"]["spec"]["containers"][0]
    # phalanx sets nvidia.com/gpu itself; memory stays; Kubeflow's rendezvous port is dropped.
    assert container["resources"] == {"limits": {"memory": "32Gi"}}
    assert "ports" not in container
    assert spec["template"]["metadata"] == {"annotations": {"sidecar.istio.io/inject": "false"}}
    assert spec["runPolicy"] == {
        "restartOn": "retryable",  # ExitCode: 128-255 retryable, 1-127 permanent, as phalanx's retryable
        "backoffLimit": 5,
        "activeDeadlineSeconds": 7200,
        "ttlSecondsAfterFinished": 600,
        "cleanPodPolicy": "All",
    }
    assert spec["scheduling"] == {"priorityClassName": "high-priority", "queueName": "team-a"}
    assert result.job["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "team-a"}
    notes = noted(result)
    assert set(notes) == {"Worker.template.spec.containers[pytorch].ports", "runPolicy.schedulingPolicy.minAvailable"}
    assert "MASTER_PORT=29500" in notes["Worker.template.spec.containers[pytorch].ports"]
    assert "all-or-nothing" in notes["runPolicy.schedulingPolicy.minAvailable"]


def test_elastic_bounds_map_and_torchruns_rendezvous_and_hpa_are_listed() -> None:
    result = convert(load("pytorch-elastic.yaml"))
    spec = result.job["spec"]
    assert spec["replicas"] == 2 and spec["elastic"] == {"minReplicas": 1, "maxReplicas": 3}
    assert spec["template"]["spec"]["containers"][0]["env"] == [{"name": "LOGLEVEL", "value": "DEBUG"}]
    notes = noted(result)
    assert set(notes) == {"elasticPolicy.rdzvBackend", "elasticPolicy.maxRestarts", "elasticPolicy.metrics"}
    assert "backoffLimit" in notes["elasticPolicy.maxRestarts"]
    assert "scale subresource" in notes["elasticPolicy.metrics"]


def test_elastic_bounds_count_the_master_as_a_pod() -> None:
    doc = load("pytorch-simple.yaml")
    doc["spec"]["elasticPolicy"] = {"minReplicas": 1, "maxReplicas": 4}
    result = convert(doc)
    assert result.job["spec"]["elastic"] == {"minReplicas": 2, "maxReplicas": 5}
    assert any("Master was added" in c for c in result.changes)


@pytest.mark.parametrize(("value", "expected"), [("4", 4), (2, 2), ("auto", "auto"), ("gpu", "auto")])
def test_nproc_per_node_values(value: object, expected: object) -> None:
    doc = load("pytorch-simple.yaml")
    doc["spec"]["nprocPerNode"] = value
    for role in ("Master", "Worker"):
        container = doc["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"][0]
        container["resources"] = {"limits": {"nvidia.com/gpu": 4}}
    assert convert(doc).job["spec"]["procsPerPod"] == expected


def test_nproc_per_node_cpu_is_listed_and_left_auto() -> None:
    doc = load("pytorch-simple.yaml")
    doc["spec"]["nprocPerNode"] = "cpu"
    result = convert(doc)
    assert "procsPerPod" not in result.job["spec"] and "one process per CPU" in noted(result)["nprocPerNode"]


def test_tf_chief_and_workers_become_mirrored_workers_and_the_evaluator_is_listed() -> None:
    result = convert(load("tf-multiworker.yaml"))
    spec = result.job["spec"]
    assert spec["framework"] == "tensorflow" and spec["strategy"] == "multiWorkerMirrored"
    assert spec["replicas"] == 3 and spec["resources"] == {"gpus": 1}
    assert spec["runPolicy"] == {"restartOn": "never", "cleanPodPolicy": "None"}
    pod = spec["template"]["spec"]
    assert pod["volumes"] == [{"name": "training", "persistentVolumeClaim": {"claimName": "strategy-volume"}}]
    assert pod["containers"][0]["name"] == "trainer" and "resources" not in pod["containers"][0]
    assert set(noted(result)) == {"tfReplicaSpecs.Evaluator"}
    assert any("task_id == 0" in c for c in result.changes)


def test_parameter_server_tfjob_is_refused_saying_what_to_use() -> None:
    with pytest.raises(CliError) as err:
        convert(load("tf-parameter-server.yaml"))
    message = str(err.value)
    assert "parameter-server TFJob" in message and "MultiWorkerMirroredStrategy" in message
    assert "\n" not in message


def test_differing_templates_use_the_workers_and_say_so() -> None:
    doc = load("pytorch-simple.yaml")
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] = "other:1"
    result = convert(doc)
    assert result.job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("docker.io/kubeflowkatib")
    assert "the Worker's is used" in noted(result)["Master.template"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(kind="MPIJob"), "not a Kubeflow PyTorchJob or TFJob"),
        (lambda d: d.update(apiVersion="batch/v1"), "not a Kubeflow PyTorchJob or TFJob"),
        (lambda d: d["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2), "at most one Master"),
        (lambda d: d["spec"].pop("pytorchReplicaSpecs"), "spec.pytorchReplicaSpecs is missing"),
        (lambda d: d["spec"]["pytorchReplicaSpecs"].update(Launcher={}), "has Launcher"),
        (
            lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(name="x"),
            "no container named 'pytorch'",
        ),
        (lambda d: d["spec"].update(nprocPerNode="many"), "nprocPerNode: 'many'"),
        (lambda d: d["metadata"].update(name="a" * 60), "would fail as InvalidSpec: metadata.name"),
        (lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"), "'Sometimes'"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(edit: Any, message: str) -> None:
    doc = load("pytorch-simple.yaml")
    edit(doc)
    with pytest.raises(CliError, match=message):
        convert(doc)


def test_cli_prints_yaml_on_stdout_and_notes_on_stderr() -> None:
    res = cli("convert", str(KUBEFLOW / "pytorch-elastic.yaml"))
    assert res.returncode == 0, res.stderr
    job = yaml.safe_load(res.stdout)
    assert job["kind"] == "TrainingJob" and job["spec"]["elastic"]["maxReplicas"] == 3
    lines = res.stderr.splitlines()
    unmapped = [line for line in lines if line.startswith("elastic-example-imagenet: not mapped: elasticPolicy.")]
    assert len(unmapped) == 3 and lines[3].startswith("elastic-example-imagenet: note: restartPolicy OnFailure")


def test_cli_converts_several_documents_from_stdin_as_json_list() -> None:
    both = (KUBEFLOW / "pytorch-simple.yaml").read_text() + "\n---\n" + (KUBEFLOW / "tf-multiworker.yaml").read_text()
    res = cli("convert", "-", "-o", "json", stdin=both)
    assert res.returncode == 0, res.stderr
    listing = yaml.safe_load(res.stdout)
    assert listing["kind"] == "List" and [i["metadata"]["name"] for i in listing["items"]] == [
        "pytorch-simple",
        "multi-worker",
    ]


def test_cli_refusal_is_one_line_and_exit_1() -> None:
    res = cli("convert", str(KUBEFLOW / "tf-parameter-server.yaml"))
    assert res.returncode == 1 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [("a: [", "is not YAML"), ("", "holds no manifest"), ("- 1\n- 2\n", "not a Kubernetes object")],
)
def test_cli_bad_files_are_one_line_errors(text: str, message: str) -> None:
    res = cli("convert", "-", stdin=text)
    assert res.returncode == 1 and message in res.stderr and len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("managed_by", "expected"),
    [("kueue.x-k8s.io/multikueue", "kueue.x-k8s.io/multikueue"), ("example.com/other", "example.com/other")],
)
def test_run_policy_managed_by_becomes_managed_by(managed_by: str, expected: str) -> None:
    # MultiKueue's value stays MultiKueue's (Kueue dispatches the TrainingJob as it did the PyTorchJob);
    # the WorkloadPriorityClass label travels with the other labels.
    source = load("pytorch-gpu.yaml")
    source["spec"]["runPolicy"]["managedBy"] = managed_by
    source["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"
    result = convert(source)
    assert result.job["spec"]["managedBy"] == expected
    assert result.job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    assert "runPolicy.managedBy" not in noted(result)


def test_kubeflows_own_controller_becomes_phalanx() -> None:
    source = load("pytorch-gpu.yaml")
    source["spec"]["runPolicy"]["managedBy"] = "kubeflow.org/training-operator"
    result = convert(source)
    assert "managedBy" not in result.job["spec"]
    assert any("kubeflow.org/training-operator -> phalanx" in c for c in result.changes)
