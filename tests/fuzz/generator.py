"""A seeded generator of TrainingJob manifests: the examples/ jobs, mostly mutated.

Mutations: wrong types, huge and negative numbers, junk in the pod template (the fields users get
wrong, and unknown ones), missing fields, unicode, deep nesting. The same seed gives the same
manifests, so a finding is reproduced with `python -m tests.fuzz --seed S --count N`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Values a field may be replaced with: every JSON type, the edges of int32/int64/float, text that is long,
# empty, unicode or control characters, and nests.
NUMBERS = [0, -1, 1, 7, 2**31 - 1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63), 1.5, -0.0, 1e308, -1e308, 1e-300]
TEXTS = [
    "",
    " ",
    "x" * 300,
    "ünïcødé-✓-🚀",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",  # fraktur letters
    "名前",
    "a\u0000b",
    "line\nbreak",
    "\u202eevil",
    "-1",
    "1e400",
    "lots",
    "auto",
    "true",
    "null",
    "${HOME}",
    "../../etc/passwd",
    "9999999999999999999999",
]
SHAPES: list[Any] = [None, True, False, [], {}, [1, "a", None], {"a": 1}, {"": ""}]


def deep(depth: int, leaf: Any = 1) -> Any:
    """A nest of dicts and lists `depth` levels deep."""
    value = leaf
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


# Junk where users get the pod template wrong; each is a (path inside template, value).
TEMPLATE_JUNK: list[tuple[tuple[str | int, ...], Any]] = [
    (("metadata", "labels"), {"team": 5}),
    (("metadata", "labels"), {"bad key!": "v"}),
    (("metadata", "annotations"), 5),
    (("metadata", "annotations"), {"a": {"b": 1}}),
    (("metadata", "name"), "renamed"),
    (("metadata", "namespace"), "elsewhere"),
    (("spec", "tolerations"), "all"),
    (("spec", "tolerations"), [{"operator": "Exists", "effect": "Sometimes"}]),
    (("spec", "nodeSelector"), {"k": 1}),
    (("spec", "hostNetwork"), "yes"),
    (("spec", "restartPolicy"), "Sometimes"),
    (("spec", "terminationGracePeriodSeconds"), -5),
    (("spec", "terminationGracePeriodSeconds"), 2**63),
    (("spec", "volumes"), [{"name": "v"}]),
    (("spec", "volumes"), [{"name": "UPPER", "emptyDir": {}}]),
    (("spec", "affinity"), {"nodeAffinity": "near"}),
    (("spec", "securityContext"), {"runAsUser": "root"}),
    (("spec", "priority"), "high"),
    (("spec", "schedulingGates"), [{"name": ""}]),
    (("spec", "unknownPodField"), {"x": 1}),
    (("spec", "ephemeralContainers"), [{"name": "debug", "image": "busybox"}]),
    (("spec", "containers", 0, "env"), [{"value": "no-name"}]),
    (("spec", "containers", 0, "env"), [{"name": "A", "valueFrom": {"fieldRef": {}}}]),
    (("spec", "containers", 0, "env"), "A=1"),
    (("spec", "containers", 0, "resources"), {"requests": "lots"}),
    (("spec", "containers", 0, "resources"), {"requests": {"cpu": "lots"}}),
    (("spec", "containers", 0, "resources"), {"limits": {"nvidia.com/gpu": -1}}),
    (("spec", "containers", 0, "resources"), {"requests": {"memory": "1e400Gi"}}),
    (("spec", "containers", 0, "ports"), [{"containerPort": 70000}]),
    (("spec", "containers", 0, "ports"), [{"containerPort": "http"}]),
    (("spec", "containers", 0, "command"), "python train.py"),
    (("spec", "containers", 0, "command"), [1, 2]),
    (("spec", "containers", 0, "image"), 42),
    (("spec", "containers", 0, "volumeMounts"), [{"name": "missing", "mountPath": "/x"}]),
    (("spec", "containers", 0, "name"), "Trainer"),
    (("spec", "containers", 0, "securityContext"), {"capabilities": {"add": "ALL"}}),
    (("spec", "containers", 0, "unknownContainerField"), True),
    (("spec", "containers"), []),
    (("spec", "containers"), [{"name": "trainer"}, {"name": "trainer"}]),
    (("spec", "containers"), [{"name": f"c{i}", "image": "x"} for i in range(40)]),
    (("spec", "initContainers"), [{"name": "init"}]),
    (("spec",), None),
    (("spec",), "pod"),
]

# Fields of the TrainingJob spec itself worth aiming at more often than a random walk would.
SPEC_TARGETS: list[tuple[str, ...]] = [
    ("replicas",),
    ("procsPerPod",),
    ("framework",),
    ("strategy",),
    ("resources", "gpus"),
    ("resources", "gpuProduct"),
    ("resources", "tpu"),
    ("elastic",),
    ("elastic", "minReplicas"),
    ("runPolicy", "backoffLimit"),
    ("runPolicy", "activeDeadlineSeconds"),
    ("runPolicy", "startupDeadlineSeconds"),
    ("runPolicy", "ttlSecondsAfterFinished"),
    ("runPolicy", "nodeLostGraceSeconds"),
    ("runPolicy", "cleanPodPolicy"),
    ("runPolicy", "restartOn"),
    ("runPolicy", "suspend"),
    ("scheduling", "gang"),
    ("scheduling", "priorityClassName"),
    ("scheduling", "queueName"),
    ("scheduling", "schedulerName"),
    ("checkpoint",),
    ("checkpoint", "path"),
    ("checkpoint", "claimName"),
    ("checkpoint", "storage", "size"),
    ("checkpoint", "uri"),
    ("metrics", "port"),
    ("metrics", "baselineSamplesPerSecond"),
]


# Changes a user makes to a live job, valid ones: applied as spec updates next to mutated ones.
SIM = "sim.phalanx.dev/"
LIVE_CHANGES: list[tuple[tuple[str, ...], Any]] = [
    (("replicas",), 1),
    (("replicas",), 3),
    (("runPolicy", "suspend"), True),
    (("runPolicy", "suspend"), False),
    (("runPolicy", "backoffLimit"), 0),
    (("runPolicy", "activeDeadlineSeconds"), 1),
    (("runPolicy", "ttlSecondsAfterFinished"), 0),
    (("runPolicy", "nodeLostGraceSeconds"), 0),
    (("runPolicy", "cleanPodPolicy"), "All"),
    (("runPolicy", "restartOn"), "always"),
    (("resources", "gpus"), 0),
    (("scheduling", "gang"), False),
    (("template", "metadata", "annotations"), {SIM + "outcome": "fail", SIM + "exit-code": "137"}),
    (("template", "metadata", "annotations"), {SIM + "outcome": "succeed"}),
]


@dataclass(frozen=True)
class Case:
    """One manifest and what was done to it (for the report)."""

    index: int
    manifest: dict[str, Any]
    mutations: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


def examples() -> list[dict[str, Any]]:
    """The TrainingJobs of examples/*.yaml (other kinds, such as a PriorityClass, left out, and so are jobs
    with spec.managedBy: phalanx writes them no status, by design, so the fuzz run has nothing to judge)."""
    jobs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "TrainingJob" and not doc["spec"].get("managedBy"):
                jobs.append(doc)
    if not jobs:
        raise RuntimeError(f"no TrainingJob in {EXAMPLES}/*.yaml to mutate")
    return jobs


def _paths(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path into a JSON-like tree, the root excluded."""
    items: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _set(root: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set root[path] = value, making dicts on the way; in a list, an index past its end appends. A
    path that runs through a leaf or a list by a name (an earlier mutation changed the shape) is skipped."""
    node: Any = root
    for key in path[:-1]:
        if isinstance(node, list):
            if not isinstance(key, int):
                return
            if not node:
                node.append({})
            key = min(key, len(node) - 1)
        elif isinstance(node, dict):
            if not isinstance(node.get(key), dict | list):
                node[key] = {}
        else:
            return
        node = node[key]
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int):
        if last < len(node):
            node[last] = value
        else:
            node.append(value)
    elif isinstance(node, dict):
        node[last] = value


def _delete(root: dict[str, Any], path: tuple[str | int, ...]) -> None:
    node: Any = root
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bases = examples()

    def value(self) -> Any:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(NUMBERS)
        if r < 0.75:
            return self.rng.choice(TEXTS)
        if r < 0.9:
            return copy.deepcopy(self.rng.choice(SHAPES))
        return deep(self.rng.choice([8, 40, 120]), self.rng.choice(NUMBERS + TEXTS))

    def mutate(self, body: dict[str, Any], spec_only: bool = False) -> str:
        """One mutation of the manifest, in place (of its spec only with `spec_only`); returns what it did."""
        spec = body.setdefault("spec", {})
        kind = self.rng.choices(
            ["spec-target", "random-path", "delete", "unknown-key", "retype", "template-junk", "name", "top"],
            weights=[30, 15, 12, 6, 10, 22, 3, 2],
        )[0]
        if spec_only and kind in ("name", "top"):
            kind = "spec-target"
        if kind == "spec-target" or (kind in ("random-path", "delete", "retype") and not isinstance(spec, dict)):
            path = self.rng.choice(SPEC_TARGETS)
            value = self.value()
            _set(body, ("spec", *path), value)
            return f"spec.{'.'.join(path)} = {_short(value)}"
        if kind == "template-junk":
            where, value = self.rng.choice(TEMPLATE_JUNK)
            _set(body, ("spec", "template", *where), copy.deepcopy(value))
            return f"spec.template.{'.'.join(map(str, where))} = {_short(value)}"
        if kind == "name":
            body["metadata"]["name"] += self.rng.choice(["-UPPER", "-ünï", "." + "x" * 250, "_under", "-"])
            return f"metadata.name = {body['metadata']['name'][:40]!r}"
        if kind == "top":
            key, value = self.rng.choice(
                [("apiVersion", "phalanx.dev/v1"), ("spec", None), ("spec", []), ("status", {"state": "Succeeded"})]
            )
            body[key] = value
            return f"{key} = {_short(value)}"
        paths = [p for p in _paths(spec)]
        if not paths:
            return "nothing to mutate"
        path = self.rng.choice(paths)
        if kind == "delete":
            _delete(spec, path)
            return f"del spec.{'.'.join(map(str, path))}"
        if kind == "unknown-key":
            node: Any = spec
            for key in path[:-1]:
                node = node[key]
            target = node if isinstance(node, dict) else spec
            target[self.rng.choice(["extra", "Replicas", "ünknown", "x" * 70])] = self.value()
            return f"unknown key under spec.{'.'.join(map(str, path[:-1]))}"
        if kind == "retype":
            node = spec
            for key in path[:-1]:
                node = node[key]
            old = node[path[-1]]
            new: Any = (
                str(old)
                if isinstance(old, int | float | bool)
                else [old]
                if isinstance(old, str)
                else self.rng.choice(TEXTS)
            )
            node[path[-1]] = new
            return f"spec.{'.'.join(map(str, path))}: {type(old).__name__} -> {type(new).__name__}"
        value = self.value()
        _set(spec, path, value)
        return f"spec.{'.'.join(map(str, path))} = {_short(value)}"

    def live_change(self, body: dict[str, Any]) -> str:
        """A valid change of a live job's spec, in place; returns what it did."""
        path, value = self.rng.choice(LIVE_CHANGES)
        _set(body, ("spec", *path), copy.deepcopy(value))
        return f"spec.{'.'.join(path)} = {_short(value)}"

    def case(self, index: int) -> Case:
        body = copy.deepcopy(self.rng.choice(self.bases))
        body["metadata"] = {"name": f"fz-{index}"}
        if self.rng.random() < 0.4:
            # Without accelerators or checkpoint storage the example runs on the simulated cpu node at once,
            # so the mutations meet running gangs too, not only gangs queued for GPUs.
            spec = body["spec"]
            spec.pop("checkpoint", None)
            if spec.get("strategy") == "tpu":
                del spec["strategy"]
            spec["resources"] = {}
            spec["replicas"] = self.rng.choice([1, 2])
        # A fifth stays a valid example (renamed): accepted jobs must keep working among the junk.
        count = 0 if self.rng.random() < 0.2 else self.rng.choice([1, 1, 1, 2, 3])
        done = tuple(self.mutate(body) for _ in range(count))
        return Case(index, body, done)

    def cases(self, count: int) -> Iterator[Case]:
        for i in range(count):
            yield self.case(i)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
