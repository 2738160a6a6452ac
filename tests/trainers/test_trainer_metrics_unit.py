"""Metric names and units are a contract with the operator and dashboards."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from phalanx_trainer.metrics import TrainerMetrics

pytestmark = pytest.mark.training

EXPECTED = {
    "phalanx_trainer_steps": "counter",
    "phalanx_trainer_samples": "counter",
    "phalanx_trainer_samples_per_second": "gauge",
    "phalanx_trainer_step_duration_seconds": "histogram",
    "phalanx_trainer_loss": "gauge",
    "phalanx_trainer_last_checkpoint_step": "gauge",
    "phalanx_trainer_last_checkpoint_timestamp_seconds": "gauge",
    "phalanx_trainer_checkpoint_save_duration_seconds": "histogram",
    "phalanx_trainer_resumed_from_step": "gauge",
    "phalanx_trainer_world_size": "gauge",
    "phalanx_trainer_rank": "gauge",
    "phalanx_trainer_attempt": "gauge",
    "phalanx_trainer_procs_per_pod": "gauge",
}


def test_names_types_and_pod_level_values() -> None:
    m = TrainerMetrics(local_world_size=1)
    m.set_identity(world_size=8, rank=4, attempt=2, procs_per_pod=4)
    for _ in range(20):
        m.observe_step(0.5, 16)  # this process: 32 samples/s; the pod of 4 lockstep ranks: 128
    m.observe_checkpoint(20, 1.5, 1_700_000_000.0)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    assert {name: families[name].type for name in EXPECTED} == EXPECTED
    value = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert value["phalanx_trainer_steps_total"] == 20
    assert value["phalanx_trainer_samples_total"] == 20 * 16 * 4
    assert value["phalanx_trainer_samples_per_second"] == pytest.approx(128)
    assert value["phalanx_trainer_step_duration_seconds_count"] == 20
    assert value["phalanx_trainer_resumed_from_step"] == -1
    assert (value["phalanx_trainer_world_size"], value["phalanx_trainer_rank"], value["phalanx_trainer_attempt"]) == (
        8,
        4,
        2,
    )
    assert value["phalanx_trainer_last_checkpoint_step"] == 20
    assert value["phalanx_trainer_last_checkpoint_timestamp_seconds"] == 1_700_000_000.0
    assert all(not s.labels or set(s.labels) == {"le"} for f in families.values() for s in f.samples)


def test_disabled_metrics_record_nothing() -> None:
    m = TrainerMetrics(enabled=False)
    m.observe_step(0.1, 10)
    assert m.steps._value.get() == 0
