"""The generated Grafana dashboards and the operator's and trainers' metric names, without a cluster:
the JSON is what the SDK renders today, it validates against the SDK's model, every query parses as
PromQL and names only metrics that exist, the chart ships it in a ConfigMap with the sidecar label,
and `promtool check metrics` accepts both expositions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus as prom_model
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.process_collector import ProcessCollector

from localcluster import binaries
from phalanx.controller import metrics as operator_metrics
from phalanx.generate import dashboards
from phalanx_trainer.metrics import TrainerMetrics
from tests.metrics.promserver import find_binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "phalanx"
GRAFANA_VARIABLES = {
    "$namespace": "ns",
    "$trainingjob": "job",
    "$__rate_interval": "1m",
    "$__range_s": "3600",
    "$__range": "1h",
}


def rendered() -> dict[str, dict[str, Any]]:
    return {name: json.loads((REPO / dashboards.DIRECTORY / name).read_text()) for name in dashboards.DASHBOARDS}


def operator_exposition() -> str:
    operator_metrics.refresh_job_gauges([{"status": {"state": "Running"}, "spec": {"framework": "pytorch"}}], 0)
    return generate_latest(REGISTRY).decode()


def trainer_exposition() -> str:
    m = TrainerMetrics()
    ProcessCollector(registry=m.registry)  # the runtime's serve() adds it
    m.set_identity(world_size=2, rank=0, attempt=1, procs_per_pod=1)
    m.observe_step(0.05, 32)
    m.set_loss(0.5)
    m.observe_checkpoint(10, 0.2)
    return generate_latest(m.registry).decode()


def substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def test_committed_json_is_what_the_sdk_renders() -> None:
    for name in dashboards.DASHBOARDS:
        assert (REPO / dashboards.DIRECTORY / name).read_text() == dashboards.render(name), (
            f"run `make generate`: {name}"
        )


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_dashboard_json_validates_against_the_sdk_model(name: str) -> None:
    register_default_plugins()
    doc = rendered()[name]
    model = Dashboard.from_json(doc)
    # Decoding then encoding gives the same JSON back: nothing is unknown to the model or dropped.
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == doc
    panels = [p for p in model.panels or [] if isinstance(p, Panel)]
    assert panels and all(isinstance(p, Panel | RowPanel) for p in model.panels or [])
    ids = [p.id_val for p in model.panels or []]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        assert panel.targets, panel.title
        assert all(isinstance(t, prom_model.Dataquery) and t.expr for t in panel.targets), panel.title
        assert panel.description, panel.title


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses recording rules' expressions with Prometheus's own PromQL parser.
    rules = [
        {"record": f"phalanx:dashboard_check:{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(e for doc in rendered().values() for e in dashboards.expressions(doc))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = subprocess.run(
        [str(find_binary("promtool")), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(rules)} rules found" in res.stdout


def test_queries_name_only_metrics_that_exist() -> None:
    exposed = set()
    for text in (operator_exposition(), trainer_exposition()):
        for line in text.splitlines():
            if line.startswith("# TYPE "):  # every family, also a labelled one with no child yet
                _, _, name, kind = line.split()
                suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
                exposed |= {name + s for s in suffixes}
            elif line and not line.startswith("#"):
                exposed.add(line.split("{")[0].split(" ")[0])
    used = set()
    for doc in rendered().values():
        queries = [e for _, e in dashboards.expressions(doc)] + [q for _, q in dashboards.variable_queries(doc)]
        for q in queries:
            used |= set(re.findall(r"\b(?:phalanx_\w+|process_\w+)", q))
    assert used and used <= exposed, f"not exposed by anything: {sorted(used - exposed)}"
    # The panels the issue asks for are there.
    titles = {t for doc in rendered().values() for t, _ in dashboards.expressions(doc)}
    for want in (
        "Throughput per job",
        "Throughput per pod",
        "Scaling efficiency and world size",
        "Step time quantiles",
        "Goodput over the time range",
        "Gang restarts",
        "Checkpoint age",
        "Reconciles and errors",
    ):
        assert want in titles


@pytest.mark.parametrize(("what", "text"), [("operator", operator_exposition), ("trainer", trainer_exposition)])
def test_promtool_check_metrics(what: str, text: Any) -> None:
    res = subprocess.run(
        [str(find_binary("promtool")), "check", "metrics"], input=text(), capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, f"{what}: {res.stdout}{res.stderr}"


def test_operator_metric_names_follow_the_conventions() -> None:
    for line in operator_exposition().splitlines():
        if line.startswith("# TYPE phalanx_"):
            _, _, name, kind = line.split()
            assert name.startswith("phalanx_operator_")
            if kind == "counter":
                assert name.endswith("_total"), name
        elif line.startswith("phalanx_operator_"):
            labels = set(re.findall(r'(\w+)="', line))
            assert labels <= {"state", "framework", "result", "reason", "kind", "le", "version"}, line


# --- the chart -------------------------------------------------------------------------------------


def helm_template(chart: Path, *flags: str) -> list[dict[str, Any]]:
    kube = binaries.version_of("kube-apiserver").lstrip("v")
    res = subprocess.run(
        [str(binaries.binary("helm")), "template", "phalanx", str(chart), f"--kube-version={kube}", *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def dashboard_maps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards")]


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    """A copy of the chart: its templates and files as they are, without values.schema.json, which is
    generated by the chart's owner and learns the dashboards.* keys there (an unknown key is refused)."""
    copy = tmp_path / "phalanx"
    shutil.copytree(CHART, copy)
    (copy / "values.schema.json").unlink(missing_ok=True)
    return copy


def test_chart_ships_the_dashboards_with_the_sidecar_label(chart: Path) -> None:
    maps = dashboard_maps(helm_template(chart, "--set=dashboards.enabled=true", "--namespace=phalanx-system"))
    assert len(maps) == 1
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "phalanx-system"
    assert sorted(cm["data"]) == sorted(dashboards.DASHBOARDS)
    for name, doc in rendered().items():
        assert json.loads(cm["data"][name]) == doc


def test_chart_dashboard_values(chart: Path) -> None:
    maps = dashboard_maps(
        helm_template(
            chart,
            "--set=dashboards.enabled=true",
            "--set=dashboards.namespace=monitoring",
            "--set=dashboards.labels.team=ml",
            "--set=dashboards.annotations.grafana_folder=Training",
        )
    )
    meta = maps[0]["metadata"]
    assert meta["namespace"] == "monitoring" and meta["labels"]["team"] == "ml"
    assert meta["labels"]["grafana_dashboard"] == "1" and meta["annotations"] == {"grafana_folder": "Training"}
    assert not dashboard_maps(helm_template(chart, "--set=dashboards.enabled=false"))
    assert not dashboard_maps(helm_template(chart))  # off until dashboards.enabled is set
