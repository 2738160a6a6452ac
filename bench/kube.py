"""Kubernetes client helpers shared by the bench process and the client subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from bench import REPO

PHALANX_CRD = REPO / "crds" / "phalanx.dev_trainingjobs.yaml"
TJ = ("phalanx.dev", "v1alpha1", "trainingjobs")
PTJ = ("kubeflow.org", "v1", "pytorchjobs")


def api_client(kubeconfig: Path, concurrency: int = 16) -> kubernetes.client.ApiClient:
    """An ApiClient whose connection pool holds `concurrency` connections (the python client has no
    QPS limiter: concurrency is the only client-side limit)."""
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = concurrency
    return kubernetes.client.ApiClient(cfg)


def raw(response: Any) -> Any:
    """The JSON body of a call made with _preload_content=False."""
    return json.loads(response.data)


def apply_crd(api: kubernetes.client.ApiClient, path: Path, timeout: float = 60.0) -> str:
    """Create or replace a CRD from a YAML file and wait until it is Established; returns its name."""
    ext = kubernetes.client.ApiextensionsV1Api(api)
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        conds = (crd.status.conditions if crd.status else None) or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return str(name)
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")


def create_namespace(core: kubernetes.client.CoreV1Api, name: str, timeout: float = 60.0) -> str:
    """A fresh namespace, once its default ServiceAccount exists (pods are refused before that)."""
    core.create_namespace({"metadata": {"name": name, "labels": {"phalanx.dev/bench": "true"}}})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items):
            return name
        time.sleep(0.1)
    raise TimeoutError(f"ServiceAccount {name}/default not created after {timeout:.0f}s")


def delete_namespace(core: kubernetes.client.CoreV1Api, name: str, wait: float = 600.0, gone: bool = False) -> float:
    """Delete a namespace; wait until its pods are gone (their GPUs free again for the next measurement)
    or, with gone=True, until the namespace itself is. Returns the seconds waited."""
    started = time.monotonic()
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise
        return 0.0
    while time.monotonic() - started < wait:
        try:
            if gone:
                core.read_namespace(name)
            elif not json.loads(core.list_namespaced_pod(name, limit=1, _preload_content=False).data)["items"]:
                return time.monotonic() - started
        except ApiException as exc:
            if exc.status == 404:
                return time.monotonic() - started
            raise
        time.sleep(0.5)
    raise TimeoutError(f"namespace {name} still has pods after {wait:.0f}s")


def bench_namespaces(core: kubernetes.client.CoreV1Api) -> list[str]:
    return [n.metadata.name for n in core.list_namespace(label_selector="phalanx.dev/bench=true").items]


WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE", "APPLY")
COUNTED = ("pods", "services", "trainingjobs", "pytorchjobs", "events")


def api_writes(api: kubernetes.client.ApiClient) -> dict[str, float]:
    """The apiserver's own count of write requests (apiserver_request_total), per "VERB resource[/sub]",
    for the resources a training operator writes. The difference over a measurement in which only one
    subject runs is that subject's calls plus what the scheduler (pods/binding) and kwok (pods/status)
    do for its pods."""
    resp = api.rest_client.pool_manager.request("GET", api.configuration.host + "/metrics", preload_content=True)
    counts: dict[str, float] = {}
    for line in resp.data.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") not in WRITE_VERBS or labels.get("resource") not in COUNTED:
            continue
        sub = labels.get("subresource")
        key = f"{labels['verb']} {labels['resource']}{'/' + sub if sub else ''}"
        counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in sorted(after.items()) if v - before.get(k, 0) > 0}
