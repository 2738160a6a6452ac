"""The Grafana dashboards, as code (grafana-foundation-sdk), rendered to charts/phalanx/dashboards/*.json.

Two dashboards: "phalanx / Training" (per job: throughput, stragglers, scaling efficiency against
world size, step time, goodput, restarts, checkpoints) and "phalanx / Operator" (the operator's
health). Every panel query is PromQL over metrics that exist: the trainers'
(trainers/phalanx_trainer/metrics.py) and the operator's (phalanx/controller/metrics.py).
tests/metrics/test_prometheus.py runs each of them against a real Prometheus.

Labels the queries rely on: the trainer series carry `namespace`, `pod` and `trainingjob` (the
TrainingJob's name), which the chart's trainer PodMonitor sets by relabeling the pod label
phalanx.dev/job-name (docs/metrics.md). Grafana fills in $__rate_interval, $__range and $__range_s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

TRAINING_UID = "phalanx-training"
OPERATOR_UID = "phalanx-operator"
TAGS = ["phalanx", "training"]
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = "namespace, trainingjob"  # the labels that identify a TrainingJob
SEL = 'namespace=~"$namespace", trainingjob=~"$trainingjob"'
LEGEND_JOB = "{{namespace}}/{{trainingjob}}"
SAMPLES_PER_SECOND = "suffix: samples/s"
LOW_EFFICIENCY = 0.7  # PEERS.md: a job below ~70 % is worth flagging


@dataclass(frozen=True)
class Q:
    """One panel query: PromQL and its legend."""

    expr: str
    legend: str = ""


# --- PromQL ------------------------------------------------------------------------------------------


def per_pod_rate() -> str:
    """Samples/s per pod, averaged over the job's pods: X(N) / N."""
    return f"avg by ({JOB}) (rate(phalanx_trainer_samples_total{{{SEL}}}[$__rate_interval]))"


def world_size() -> str:
    return f"max by ({JOB}) (phalanx_trainer_world_size{{{SEL}}})"


def efficiency() -> str:
    """E(N) = X(N) / (N * X(1)) = per-pod rate now / per-pod rate at the smallest world size the job ran
    at in the time range: the rate it sustained there (90th percentile, so start-up and restarts at that
    size do not drag it down). `@ end()` pins both to the whole range, whatever the step."""
    smallest = f"min_over_time({world_size()}[$__range:] @ end())"
    at_smallest = f"{per_pod_rate()} and on ({JOB}) ({world_size()} <= on ({JOB}) {smallest})"
    baseline = f"quantile_over_time(0.9, ({at_smallest})[$__range:] @ end())"
    return f"{per_pod_rate()} / on ({JOB}) {baseline}"


def global_step(offset: str = "") -> str:
    """The step the job has reached (kept progress): resumed-from step + steps of this attempt."""
    at = f" offset {offset}" if offset else ""
    resumed = f"clamp_min(phalanx_trainer_resumed_from_step{{{SEL}}}{at}, 0)"
    return f"max by ({JOB}) ({resumed} + phalanx_trainer_steps_total{{{SEL}}}{at})"


def goodput() -> str:
    """Goodput over the time range: steps gained (a restart loses the steps after the last checkpoint)
    times the mean step time, over the range's length. A job that began inside the range starts at 0."""
    step = global_step()
    start = f"({global_step('$__range')} or on ({JOB}) {step} * 0)"
    step_time = (
        f"sum by ({JOB}) (rate(phalanx_trainer_step_duration_seconds_sum{{{SEL}}}[$__range])) / "
        f"sum by ({JOB}) (rate(phalanx_trainer_step_duration_seconds_count{{{SEL}}}[$__range]))"
    )
    return f"clamp(({step} - on ({JOB}) {start}) * on ({JOB}) ({step_time}) / $__range_s, 0, 1)"


STEP_SUM = "phalanx_trainer_step_duration_seconds_sum"
STEP_COUNT = "phalanx_trainer_step_duration_seconds_count"
WAIT = "phalanx_trainer_collective_wait_seconds_total"


def per_pod(counter: str) -> str:
    """The per-second growth of one of the trainers' counters, per pod."""
    return f"sum by ({JOB}, pod) (rate({counter}{{{SEL}}}[$__rate_interval]))"


def step_quantile(q: float) -> str:
    return (
        f"histogram_quantile({q}, sum by ({JOB}, le) "
        f"(rate(phalanx_trainer_step_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))"
    )


def operator_quantile(q: float, metric: str, window: str = "$__rate_interval", by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket[{window}])))"


# --- panel builders ----------------------------------------------------------------------------------


def _targets(queries: Sequence[Q], instant: bool = False) -> list[Builder[Dataquery]]:
    out: list[Builder[Dataquery]] = []
    for i, q in enumerate(queries):
        t = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if q.legend:
            t = t.legend_format(q.legend)
        out.append(t.instant() if instant else t.range())
    return out


def ts(title: str, description: str, queries: Sequence[Q], unit: str, width: int = 12) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .unit(unit)
        .span(width)
        .height(8)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )
    return panel


def stat_panel(title: str, description: str, queries: Sequence[Q], unit: str, width: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True))
        .unit(unit)
        .span(width)
        .height(6)
        .graph_mode(common.BigValueGraphMode.NONE)
    )


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def _datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _label_variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


# --- dashboards --------------------------------------------------------------------------------------


def training() -> db.Dashboard:
    efficiency_panel = (
        ts(
            "Scaling efficiency and world size",
            "Weak-scaling efficiency E(N) = X(N) / (N * X(1)): samples/s per pod now over samples/s per pod at "
            "the smallest world size the job ran at in this time range (left axis), and the world size (right "
            "axis). Below 70 % the extra workers buy little. The efficiency in `kubectl get tj` uses the job's "
            "whole history or a declared baseline (spec.metrics.baselineSamplesPerSecond).",
            [Q(efficiency(), LEGEND_JOB + " efficiency"), Q(world_size(), LEGEND_JOB + " world size")],
            "percentunit",
        )
        .thresholds(_thresholds((None, "red"), (LOW_EFFICIENCY, "green")))
        .override_by_query(
            "B",
            [
                dm.DynamicConfigValue(id_val="unit", value="none"),
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                dm.DynamicConfigValue(id_val="custom.drawStyle", value="line"),
                dm.DynamicConfigValue(id_val="custom.lineInterpolation", value="stepAfter"),
            ],
        )
    )
    rate = f"rate(phalanx_trainer_samples_total{{{SEL}}}[$__rate_interval])"
    return (
        db.Dashboard("phalanx / Training")
        .uid(TRAINING_UID)
        .description("Throughput, scaling efficiency, goodput and checkpoints of phalanx TrainingJobs.")
        .tags(TAGS)
        .time("now-3h", "now")
        .refresh("30s")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(_datasource_variable())
        .with_variable(
            _label_variable("namespace", "Namespace", "label_values(phalanx_trainer_samples_total, namespace)")
        )
        .with_variable(
            _label_variable(
                "trainingjob",
                "TrainingJob",
                'label_values(phalanx_trainer_samples_total{namespace=~"$namespace"}, trainingjob)',
            )
        )
        .with_row(db.Row("Throughput and scaling"))
        .with_panel(
            ts(
                "Throughput per job",
                "X(N): samples/s of the whole job, the sum over its pods (each pod reports its own samples).",
                [Q(f"sum by ({JOB}) ({rate})", LEGEND_JOB)],
                SAMPLES_PER_SECOND,
            )
        )
        .with_panel(efficiency_panel)
        .with_row(db.Row("Stragglers"))
        .with_panel(
            ts(
                "Throughput per pod",
                "Samples/s of each pod. DDP ranks run in lockstep: one slow pod holds back the whole gang.",
                [Q(f"sum by ({JOB}, pod) ({rate})", "{{namespace}}/{{pod}}")],
                SAMPLES_PER_SECOND,
            )
        )
        .with_panel(
            ts(
                "Slowest pod against the job's mean",
                "Slowest pod's samples/s over the mean pod's: 100 % means no straggler.",
                [Q(f"min by ({JOB}) ({rate}) / avg by ({JOB}) ({rate})", LEGEND_JOB)],
                "percentunit",
            ).thresholds(_thresholds((None, "red"), (0.9, "green")))
        )
        .with_panel(
            ts(
                "Step time per pod",
                "Mean wall time of one step of each pod (local rank 0). In lockstep every rank's steps take as "
                "long as the slowest one's, so these lines agree even when one rank is slow: see the next panel.",
                [Q(f"{per_pod(STEP_SUM)} / {per_pod(STEP_COUNT)}", "{{namespace}}/{{pod}}")],
                "s",
            )
        )
        .with_panel(
            ts(
                "Own step time per pod (less waiting for peers)",
                "Step time less the time spent blocked in the gradient all-reduce waiting for the other ranks "
                "(phalanx_trainer_collective_wait_seconds_total, PyTorch DDP): the straggler stands out here. "
                "The operator names it in the Straggler condition (docs/health.md).",
                [
                    Q(
                        f"({per_pod(STEP_SUM)} - {per_pod(WAIT)}) / {per_pod(STEP_COUNT)}",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                "s",
            )
        )
        .with_panel(
            ts(
                "Time since each pod's last step",
                "Seconds since the pod's last training step ended. All pods of a hung gang climb together; "
                "runPolicy.progressDeadlineSeconds restarts the gang when no rank advances for that long.",
                [
                    Q(
                        f"time() - max by ({JOB}, pod) (phalanx_trainer_last_step_timestamp_seconds{{{SEL}}} > 0)",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                "s",
            )
        )
        .with_row(db.Row("Steps"))
        .with_panel(
            ts(
                "Step time quantiles",
                "Wall time of one training step (data loading included), from the trainers' histogram.",
                [
                    Q(step_quantile(0.5), LEGEND_JOB + " p50"),
                    Q(step_quantile(0.9), LEGEND_JOB + " p90"),
                    Q(step_quantile(0.99), LEGEND_JOB + " p99"),
                ],
                "s",
            )
        )
        .with_panel(
            ts(
                "Loss",
                "Most recently logged training loss (local rank 0 of each pod, averaged over the pods).",
                [Q(f"avg by ({JOB}) (phalanx_trainer_loss{{{SEL}}})", LEGEND_JOB)],
                "none",
            )
        )
        .with_row(db.Row("Restarts, goodput and checkpoints"))
        .with_panel(
            stat_panel(
                "Goodput over the time range",
                "Share of the time range spent on training progress the job kept: steps gained times the mean "
                "step time, over the range. Pending, restarting and redoing steps lost since the last "
                "checkpoint count against it. `kubectl get tj -o yaml` shows it since the job's creation.",
                [Q(goodput(), LEGEND_JOB)],
                "percentunit",
            ).thresholds(_thresholds((None, "red"), (0.5, "orange"), (0.8, "green")))
        )
        .with_panel(
            ts(
                "Gang attempt",
                "Attempt of the running gang: it steps up at every gang restart or rescale.",
                [Q(f"max by ({JOB}) (phalanx_trainer_attempt{{{SEL}}})", LEGEND_JOB)],
                "none",
                width=6,
            )
        )
        .with_panel(
            stat_panel(
                "Checkpoint age",
                "Time since the newest committed checkpoint (within the last 6 hours).",
                [
                    Q(
                        f"time() - (max by ({JOB}) "
                        f"(max_over_time(phalanx_trainer_last_checkpoint_timestamp_seconds{{{SEL}}}[6h])) > 0)",
                        LEGEND_JOB,
                    )
                ],
                "s",
            ).thresholds(_thresholds((None, "green"), (1800, "orange"), (3600, "red")))
        )
        .with_panel(
            stat_panel(
                "Last checkpoint step",
                "Step of the newest committed checkpoint (within the last 6 hours).",
                [
                    Q(
                        f"max by ({JOB}) (max_over_time(phalanx_trainer_last_checkpoint_step{{{SEL}}}[6h])) >= 0",
                        LEGEND_JOB,
                    )
                ],
                "none",
            )
        )
        .with_panel(
            ts(
                "Checkpoint save time (p90)",
                "90th percentile of the time to write and commit one checkpoint, over the time range.",
                [
                    Q(
                        f"histogram_quantile(0.9, sum by ({JOB}, le) "
                        f"(increase(phalanx_trainer_checkpoint_save_duration_seconds_bucket{{{SEL}}}[$__range])))",
                        LEGEND_JOB,
                    )
                ],
                "s",
            )
        )
        .with_panel(
            ts(
                "Gang restarts (all jobs)",
                "Gang restarts counted by the operator, by reason: GangRestart (a failure), Hung, Straggler, "
                "GPUUnhealthy, Rescaling, Resumed.",
                [Q("sum by (reason) (increase(phalanx_operator_gang_restarts_total[$__rate_interval]))", "{{reason}}")],
                "none",
            )
        )
    )


def operator() -> db.Dashboard:
    on_operator = "and on (instance) phalanx_operator_build_info"
    return (
        db.Dashboard("phalanx / Operator")
        .uid(OPERATOR_UID)
        .description("Health of the phalanx operator: jobs, reconciles, admission and trainer telemetry.")
        .tags(["phalanx", "operator"])
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(_datasource_variable())
        .with_row(db.Row("Jobs"))
        .with_panel(
            ts(
                "TrainingJobs by state",
                "Jobs the operator knows, by state.",
                [Q("sum by (state) (phalanx_operator_jobs)", "{{state}}")],
                "none",
            )
        )
        .with_panel(
            ts(
                "Job starts and ends",
                "Jobs whose first gang reached Running, and jobs that finished, by result and reason.",
                [
                    Q(
                        "sum by (framework) (increase(phalanx_operator_job_starts_total[$__rate_interval]))",
                        "started {{framework}}",
                    ),
                    Q(
                        "sum by (result, reason) (increase(phalanx_operator_job_ends_total[$__rate_interval]))",
                        "{{result}} {{reason}}",
                    ),
                ],
                "none",
            )
        )
        .with_panel(
            ts(
                "Time from creation to running",
                "p50 and p90 of the time from job creation to all pods of its first gang Running, over the range.",
                [
                    Q(operator_quantile(0.5, "phalanx_operator_job_time_to_running_seconds", "$__range"), "p50"),
                    Q(operator_quantile(0.9, "phalanx_operator_job_time_to_running_seconds", "$__range"), "p90"),
                ],
                "s",
            )
        )
        .with_panel(
            ts(
                "Gang admission",
                "Gangs admitted by the built-in gang admission per second, and the p90 wait for it over the range.",
                [
                    Q("sum(rate(phalanx_operator_admissions_total[$__rate_interval]))", "admitted/s"),
                    Q(operator_quantile(0.9, "phalanx_operator_admission_wait_seconds", "$__range"), "wait p90"),
                ],
                "none",
            )
        )
        .with_panel(
            ts(
                "Gang restarts",
                "Whole-gang restarts by reason.",
                [Q("sum by (reason) (increase(phalanx_operator_gang_restarts_total[$__rate_interval]))", "{{reason}}")],
                "none",
            )
        )
        .with_panel(
            ts(
                "Pods created",
                "Pods created by the operator per second.",
                [Q("sum(rate(phalanx_operator_pods_created_total[$__rate_interval]))", "pods/s")],
                "none",
            )
        )
        .with_row(db.Row("Reconciles"))
        .with_panel(
            ts(
                "Reconciles and errors",
                "Reconciles per second, and failed reconciles per second by exception class (0 when none).",
                [
                    Q("sum(rate(phalanx_operator_reconcile_duration_seconds_count[$__rate_interval]))", "reconciles/s"),
                    Q(
                        "sum by (reason) (rate(phalanx_operator_reconcile_errors_total[$__rate_interval])) "
                        "or on () vector(0)",
                        "errors/s {{reason}}",
                    ),
                ],
                "none",
            )
        )
        .with_panel(
            ts(
                "Reconcile duration",
                "p50 and p99 of one reconcile of one job.",
                [
                    Q(operator_quantile(0.5, "phalanx_operator_reconcile_duration_seconds"), "p50"),
                    Q(operator_quantile(0.99, "phalanx_operator_reconcile_duration_seconds"), "p99"),
                ],
                "s",
            )
        )
        .with_panel(
            ts(
                "Work queue depth",
                "Jobs waiting in the reconcile queue.",
                [Q("max(phalanx_operator_work_queue_depth)", "queued")],
                "none",
            )
        )
        .with_panel(
            ts(
                "Operator CPU and memory",
                "CPU (cores) and resident memory of the operator process.",
                [
                    Q(f"rate(process_cpu_seconds_total[$__rate_interval]) {on_operator}", "CPU {{instance}}"),
                    Q(f"process_resident_memory_bytes {on_operator}", "RSS {{instance}}"),
                ],
                "none",
            ).override_by_query("B", [dm.DynamicConfigValue(id_val="unit", value="bytes")])
        )
        .with_row(db.Row("Trainer telemetry"))
        .with_panel(
            ts(
                "Trainer scrapes",
                "Reads of trainer pods' metrics endpoints per second, by result (ok, error, timeout, invalid).",
                [Q("sum by (result) (rate(phalanx_operator_trainer_scrapes_total[$__rate_interval]))", "{{result}}")],
                "none",
            )
        )
        .with_panel(
            ts(
                "Trainer scrape duration and scraped jobs",
                "p99 of one trainer scrape, and the running jobs being scraped.",
                [
                    Q(operator_quantile(0.99, "phalanx_operator_trainer_scrape_duration_seconds"), "p99"),
                    Q("max(phalanx_operator_trainer_scrape_jobs)", "jobs"),
                ],
                "s",
            ).override_by_query("B", [dm.DynamicConfigValue(id_val="unit", value="none")])
        )
        .with_panel(
            ts(
                "Status updates from telemetry",
                "Jobs queued per second because their throughput summary changed, by kind (event, drift).",
                [Q("sum by (kind) (rate(phalanx_operator_telemetry_updates_total[$__rate_interval]))", "{{kind}}")],
                "none",
            )
        )
        .with_panel(
            table.Panel()
            .title("Build")
            .description("Version of the running operator.")
            .datasource(DATASOURCE)
            .targets(_targets([Q("max by (version) (phalanx_operator_build_info)")], instant=True))
            .show_header(True)
            .span(6)
            .height(6)
        )
    )


# --- rendering ---------------------------------------------------------------------------------------

DASHBOARDS = {"phalanx-training.json": training, "phalanx-operator.json": operator}
DIRECTORY = "charts/phalanx/dashboards"


def as_dict(board: db.Dashboard) -> dict[str, Any]:
    model = board.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number  # stable panel ids (links and Grafana's edit state use them)
    doc: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return doc


def render(name: str) -> str:
    return json.dumps(as_dict(DASHBOARDS[name]()), indent=2, sort_keys=True) + "\n"


def expressions(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every panel query in a rendered dashboard."""
    for panel in doc.get("panels") or []:
        for sub in [panel, *(panel.get("panels") or [])]:
            for target in sub.get("targets") or []:
                if target.get("expr"):
                    yield sub.get("title", ""), target["expr"]


def variable_queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(variable name, label_values(...) query) of every query variable."""
    for var in (doc.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            query = var.get("query")
            yield var["name"], query if isinstance(query, str) else str((query or {}).get("query", ""))
