"""Prometheus metrics of one training pod, served on PHALANX_METRICS_PORT.

The names are a contract with the operator and the Grafana dashboards: one prefix, base units, no
labels (every value is per pod; the scrape adds pod/job labels). With several processes per pod
only local rank 0 serves, and it reports the pod's numbers: DDP ranks run in lockstep, so the
pod's samples are this process's samples times the local world size.

Per-step cost is a few lock-protected additions in memory and one clock read (no syscalls, no
allocation beyond prometheus-client's own); throughput is an exponential moving average of per-step rates so a
single slow step (a checkpoint) shows up but does not dominate.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

PREFIX = "phalanx_trainer_"
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SAVE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
THROUGHPUT_EMA_ALPHA = 0.1  # about the last 10-20 steps


class TrainerMetrics:
    """All trainer metrics in a private registry. `enabled=False` makes every hook a no-op."""

    def __init__(self, *, enabled: bool = True, local_world_size: int = 1, registry: CollectorRegistry | None = None):
        self.enabled = enabled
        self.local_world_size = local_world_size
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        self.steps = Counter(p + "steps", "Optimizer steps completed by this pod's training processes", registry=r)
        self.samples = Counter(p + "samples", "Training samples processed by this pod", registry=r)
        self.samples_per_second = Gauge(
            p + "samples_per_second", "Recent training throughput of this pod (EMA over recent steps)", registry=r
        )
        self.step_duration = Histogram(
            p + "step_duration_seconds",
            "Wall time of one training step, data loading included",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        # Its share of the step time: the rest is this process's own work, which is what tells a slow
        # rank (little waiting) from its peers (waiting for it) when DDP keeps them in lockstep.
        self.collective_wait = Counter(
            p + "collective_wait_seconds",
            "Time this pod's training process spent blocked in the gradient all-reduce after its own "
            "backward pass was done (PyTorch DDP; 0 where the framework does not let it be measured)",
            registry=r,
        )
        self.last_step_timestamp = Gauge(
            p + "last_step_timestamp_seconds",
            "Unix time the last training step ended (its age: a stalled rank)",
            registry=r,
        )
        self.loss = Gauge(p + "loss", "Most recently logged training loss of local rank 0", registry=r)
        self.last_checkpoint_step = Gauge(
            p + "last_checkpoint_step", "Step of the last committed checkpoint", registry=r
        )
        self.last_checkpoint_timestamp = Gauge(
            p + "last_checkpoint_timestamp_seconds", "Unix time of the last committed checkpoint", registry=r
        )
        self.checkpoint_save_duration = Histogram(
            p + "checkpoint_save_duration_seconds",
            "Time to write and commit one checkpoint",
            buckets=SAVE_BUCKETS,
            registry=r,
        )
        self.resumed_from_step = Gauge(
            p + "resumed_from_step", "Step this attempt resumed from; -1 when it started fresh", registry=r
        )
        self.world_size = Gauge(p + "world_size", "Training processes in the job", registry=r)
        self.rank = Gauge(p + "rank", "Global rank of the process that serves these metrics", registry=r)
        self.attempt = Gauge(p + "attempt", "Gang attempt (PHALANX_ATTEMPT, 1-based)", registry=r)
        self.procs_per_pod = Gauge(p + "procs_per_pod", "Training processes in this pod", registry=r)
        self.preflight_seconds = Gauge(
            p + "preflight_seconds",
            "Duration of this attempt's preflight check (peers resolved, rendezvous, all-reduce); 0 without one",
            registry=r,
        )
        self.preflight_bandwidth = Gauge(
            p + "preflight_bus_bandwidth_bytes_per_second",
            "Bus bandwidth of the preflight all-reduce: 2 (n-1)/n x bytes / seconds; 0 without a preflight",
            registry=r,
        )
        self.resumed_from_step.set(-1)
        self.last_checkpoint_step.set(-1)
        self.procs_per_pod.set(local_world_size)
        self._ema_rate = 0.0
        self._server_started = False

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Start the HTTP endpoint (a daemon thread). Only local rank 0 should call it."""
        if not self.enabled or self._server_started:
            return
        # CPU and memory of the serving process, handy next to throughput on a dashboard.
        ProcessCollector(registry=self.registry)
        start_http_server(port, addr=addr, registry=self.registry)
        self._server_started = True

    def set_identity(self, *, world_size: int, rank: int, attempt: int, procs_per_pod: int) -> None:
        if not self.enabled:
            return
        self.local_world_size = procs_per_pod
        self.world_size.set(world_size)
        self.rank.set(rank)
        self.attempt.set(attempt)
        self.procs_per_pod.set(procs_per_pod)

    def observe_step(self, duration_s: float, samples: int, wait_s: float = 0.0) -> None:
        """One step of this process: `samples` of its own, recorded as the pod's; `wait_s` of the step
        was spent waiting for peers in collectives."""
        if not self.enabled:
            return
        pod_samples = samples * self.local_world_size
        self.steps.inc()
        if wait_s > 0:
            self.collective_wait.inc(wait_s)
        self.samples.inc(pod_samples)
        self.step_duration.observe(duration_s)
        self.last_step_timestamp.set(time.time())
        if duration_s > 0:
            rate = pod_samples / duration_s
            ema = self._ema_rate
            self._ema_rate = rate if ema == 0.0 else ema + THROUGHPUT_EMA_ALPHA * (rate - ema)
            self.samples_per_second.set(self._ema_rate)

    @property
    def throughput(self) -> float:
        """The pod's recent samples/s (the gauge's value)."""
        return self._ema_rate

    def set_loss(self, value: float) -> None:
        if self.enabled:
            self.loss.set(value)

    def observe_checkpoint(self, step: int, duration_s: float, timestamp: float | None = None) -> None:
        if not self.enabled:
            return
        self.checkpoint_save_duration.observe(duration_s)
        self.set_last_checkpoint(step, time.time() if timestamp is None else timestamp)

    def set_last_checkpoint(self, step: int, timestamp: float) -> None:
        """Also called on resume: the checkpoint resumed from is the last committed one."""
        if self.enabled:
            self.last_checkpoint_step.set(step)
            self.last_checkpoint_timestamp.set(timestamp)

    def set_preflight(self, seconds: float, bus_bytes_per_second: float) -> None:
        if self.enabled:
            self.preflight_seconds.set(seconds)
            self.preflight_bandwidth.set(bus_bytes_per_second)

    def set_resumed_from(self, step: int | None) -> None:
        if self.enabled:
            self.resumed_from_step.set(-1 if step is None else step)
