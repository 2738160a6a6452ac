"""The scheduling examples (examples/gpu-job.yaml, tpu-job.yaml, gang-admission.yaml, native-gang.yaml) run as
documented."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import sim
from tests.plugins.operator import JobClient
from tests.scheduling.conftest import all_running, gpu_job
from tests.scheduling.test_gang_admission import wait_admission

pytestmark = pytest.mark.usefixtures("operator")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def test_gpu_example_runs_on_h100_nodes_with_its_placement(jobs: JobClient) -> None:
    (job,) = load("gpu-job.yaml")
    jobs.create(job)
    pods = jobs.wait_pods("llm-ddp", all_running(2))
    for p in pods:
        assert (
            jobs.core.read_node(p.spec.node_name).metadata.labels["nvidia.com/gpu.product"]
            == job["spec"]["resources"]["gpuProduct"]
        )
        trainer = p.spec.containers[0]
        assert trainer.resources.limits["nvidia.com/gpu"] == "8" == trainer.resources.requests["nvidia.com/gpu"]
        assert any(t.key == "nvidia.com/gpu" for t in p.spec.tolerations)
        assert {e.name: e.value for e in trainer.env}["PET_NPROC_PER_NODE"] == "8"
        shm = next(v for v in p.spec.volumes if v.empty_dir and v.empty_dir.medium == "Memory")
        assert shm.empty_dir.size_limit == "8Gi"
    assert jobs.wait_state("llm-ddp", "Running")["status"]["worldSize"] == 16


def test_tpu_example_runs_on_the_tpu_slice(jobs: JobClient) -> None:
    (job,) = load("tpu-job.yaml")
    jobs.create(job)
    pods = jobs.wait_pods("resnet-tpu", all_running(2))
    assert sorted(p.spec.node_name for p in pods) == ["tpu-v5e-0", "tpu-v5e-1"]


def test_gang_admission_example_runs_prod_first_and_queues_research(
    jobs: JobClient, namespace: str, api_client: client.ApiClient
) -> None:
    priority_class, *tjs = load("gang-admission.yaml")
    scheduling = client.SchedulingV1Api(api_client)
    scheduling.create_priority_class(priority_class)
    try:
        # Both wait for the same GPUs (a job holding all 32 runs first): then priority decides.
        jobs.create(gpu_job("earlier", 4))
        jobs.wait_pods("earlier", all_running(4))
        for job in tjs:  # research first: it is the older job, and still goes after prod
            jobs.create(job)
        for job in tjs:
            wait_admission(jobs, job["metadata"]["name"], "InsufficientGPU")  # both queued
        for p in jobs.pods("earlier"):
            sim.make_pod_succeed(jobs.core, namespace, p.metadata.name)
        jobs.wait_pods("prod", all_running(3))
        jobs.wait(
            "research",
            lambda j: (
                "8 free across 1 node(s)"
                in next(c for c in j["status"]["conditions"] if c["type"] == "Admitted")["message"]
            ),
            what="research's note updated",
        )
        cond = jobs.condition("research", "Admitted") or {}
        assert cond["message"] == (
            "needs 24 nvidia.com/gpu: 3 pod(s) x 8; 8 free across 1 node(s), room for 1 of 3 pod(s)"
        )
        assert jobs.pods("research") and all(p.spec.scheduling_gates for p in jobs.pods("research"))
    finally:
        scheduling.delete_priority_class(priority_class["metadata"]["name"])


def test_native_gang_example_is_placed_whole_by_the_kube_scheduler(jobs: JobClient, namespace: str) -> None:
    (job,) = load("native-gang.yaml")
    jobs.create(job)
    pods = jobs.wait_pods("llm-native", all_running(3))
    for p in pods:
        spec = json.loads(jobs.core.read_namespaced_pod(p.metadata.name, namespace, _preload_content=False).data)
        assert spec["spec"]["schedulingGroup"] == {"podGroupName": "llm-native-a1"}
        assert not spec["spec"].get("schedulingGates")
    jobs.wait(
        "llm-native",
        lambda j: (jobs.condition("llm-native", "Admitted") or {}).get("reason") == "AdmittedByPodGroup",
        what="Admitted by the PodGroup",
    )
