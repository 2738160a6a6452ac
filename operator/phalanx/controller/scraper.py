"""Reads the trainers' metrics for the operator's throughput, efficiency and goodput summary.

How: the operator scrapes the rank pods' own endpoints (http://<podIP>:<spec.metrics.port>/metrics,
served by local rank 0 of each pod) and parses them with prometheus_client's parser. It does NOT
query a Prometheus server. The trade-off, in short (docs/metrics.md has the long form):

* Scraping works in every cluster, with or without a Prometheus, so `kubectl get tj` shows the
  efficiency everywhere; it needs no label conventions, tenancy headers or retention of somebody
  else's Prometheus, and its window is the operator's own. Its price: the operator must reach pod
  IPs on the metrics port (a NetworkPolicy has to allow it) and reads each pod once per interval,
  next to Prometheus's own scrape (the exposition is a few kB).
* Asking Prometheus would cost one query for all jobs, but ties the operator's status to an
  optional component, its relabeling (which label holds the job name) and its scrape interval.

So there is exactly one source, chosen by PHALANX_TELEMETRY=scrape (default) or off. Anything else
-- including `prometheus`, or setting PHALANX_PROMETHEUS_URL as if the operator read it -- stops the
operator at startup with a message saying so, instead of being silently ignored.

Cost is O(jobs): only Running jobs are read, each once per interval (jobs are spread over the
interval), each at most `max_pods_per_job` pods (an even sample of bigger gangs: DDP ranks run in
lockstep), with a bounded number of requests in flight. A job is queued for reconcile only when its
summary changed materially (core/telemetry.change), and drift at most once per `min_update_s`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from phalanx.api.models import PreflightStatus
from phalanx.controller import metrics
from phalanx.controller.caches import Caches, JobKey
from phalanx.core import health, telemetry
from phalanx.core.health import GangProgress, RankProgress
from phalanx.core.model import PodView
from phalanx.core.observe import job_view
from phalanx.core.settings import ConfigError, env_int, env_number
from phalanx.core.telemetry import Change, JobTelemetry, PodSample

log = logging.getLogger("phalanx")

SCRAPE = "scrape"
OFF = "off"
SOURCES = (SCRAPE, OFF)
ENV_SOURCE = "PHALANX_TELEMETRY"
ENV_PROMETHEUS_URL = "PHALANX_PROMETHEUS_URL"
MAX_BODY = 1 << 20  # a trainer's exposition is a few kB; refuse anything near a MiB
TICK = 1.0  # seconds between looks at which jobs are due

# The trainer series the summary needs (trainers/phalanx_trainer/metrics.py). Only these lines are
# handed to the parser: histogram buckets and process metrics are skipped unparsed.
WANTED = {
    "phalanx_trainer_samples_total": "samples",
    "phalanx_trainer_steps_total": "steps",
    "phalanx_trainer_step_duration_seconds_sum": "step_seconds_sum",
    "phalanx_trainer_step_duration_seconds_count": "step_seconds_count",
    "phalanx_trainer_resumed_from_step": "resumed_from_step",
    "phalanx_trainer_last_checkpoint_step": "checkpoint_step",
    "phalanx_trainer_last_checkpoint_timestamp_seconds": "checkpoint_time",
    "phalanx_trainer_world_size": "world_size",
    "phalanx_trainer_procs_per_pod": "procs_per_pod",
    "phalanx_trainer_attempt": "attempt",
    # Not used by the summary; read by `kubectl phalanx status` for each rank.
    "phalanx_trainer_samples_per_second": "samples_per_second",
    "phalanx_trainer_last_step_timestamp_seconds": "last_step_time",
    # Health verdicts (core/health.py): a rank's step time less its wait for peers.
    "phalanx_trainer_collective_wait_seconds_total": "wait_seconds",
    "phalanx_trainer_preflight_seconds": "preflight_seconds",
    "phalanx_trainer_preflight_bus_bandwidth_bytes_per_second": "preflight_bandwidth",
}
REQUIRED = ("samples", "steps", "attempt")


_NO_PREFLIGHT = PreflightStatus(attempt=0, seconds=0, bus_bandwidth_bytes_per_second=0)


ENV_NETWORKS = "PHALANX_SCRAPE_NETWORKS"


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{ENV_NETWORKS}={value!r}: {exc}; give comma-separated CIDRs such as 10.0.0.0/8") from exc


@dataclass(frozen=True)
class ScrapeSettings:
    source: str = SCRAPE
    interval_s: float = 15.0  # per job
    window_s: float = 60.0  # rate window, like Prometheus's rate(...[1m])
    timeout_s: float = 3.0  # per pod request
    concurrency: int = 32  # requests in flight, all jobs together
    max_pods_per_job: int = 16
    min_update_s: float = 60.0  # drift updates of one job's status at most this often
    # Only pod IPs inside these networks are contacted (empty: any). Test clusters whose simulated pods
    # carry made-up addresses set 127.0.0.0/8 so nothing off the machine is ever contacted.
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ScrapeSettings:
        source = (env.get(ENV_SOURCE) or SCRAPE).strip().lower()
        if source not in SOURCES:
            hint = (
                " phalanx does not read trainer metrics from Prometheus: it scrapes the trainer pods itself "
                "(docs/metrics.md explains why)."
                if source == "prometheus"
                else ""
            )
            raise ConfigError(f"{ENV_SOURCE}={source!r} is not one of {', '.join(SOURCES)}.{hint}")
        if env.get(ENV_PROMETHEUS_URL):
            raise ConfigError(
                f"{ENV_PROMETHEUS_URL} is set, but the operator never queries Prometheus: it scrapes the trainer "
                f"pods' metrics endpoints itself ({ENV_SOURCE}=scrape|off). Unset {ENV_PROMETHEUS_URL}."
            )
        interval = env_number(env, "PHALANX_SCRAPE_INTERVAL_SECONDS", cls.interval_s, 1, 3600)
        window = env_number(env, "PHALANX_SCRAPE_WINDOW_SECONDS", max(cls.window_s, 2 * interval), 2 * interval, 86400)
        return cls(
            source=source,
            interval_s=interval,
            window_s=window,
            timeout_s=env_number(env, "PHALANX_SCRAPE_TIMEOUT_SECONDS", cls.timeout_s, 0.1, 60),
            concurrency=env_int(env, "PHALANX_SCRAPE_CONCURRENCY", cls.concurrency, 1, 1024),
            max_pods_per_job=env_int(env, "PHALANX_SCRAPE_MAX_PODS_PER_JOB", cls.max_pods_per_job, 1, 10000),
            min_update_s=env_number(env, "PHALANX_TELEMETRY_MIN_UPDATE_SECONDS", cls.min_update_s, 0, 86400),
            networks=_networks(env.get(ENV_NETWORKS, "")),
        )

    def allows(self, ip: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def describe(self) -> str:
        if self.source == OFF:
            return (
                f"telemetry: off ({ENV_SOURCE}=off): trainer pods are not scraped; status.throughput and "
                "status.lastCheckpoint stay empty"
            )
        return (
            f"telemetry: scraping trainer pods directly at podIP:spec.metrics.port/metrics (not Prometheus) "
            f"every {self.interval_s:g}s per running job, rate window {self.window_s:g}s, "
            f"<= {self.concurrency} requests in flight, <= {self.max_pods_per_job} pods per job"
        )


class Jobs(Protocol):
    """What the scraper needs from the operator: its caches and its work queue."""

    caches: Caches

    def pods_of(self, key: JobKey, uid: str) -> list[PodView]: ...

    def enqueue(self, key: JobKey) -> None: ...


def parse_exposition(text: str, at: float) -> PodSample | None:
    """The summary's series from one trainer's /metrics text; None when it is not a phalanx trainer."""
    lines = [line for line in text.splitlines() if line.split(" ", 1)[0].split("{", 1)[0] in WANTED]
    values: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name in WANTED and not sample.labels:
                values[WANTED[sample.name]] = sample.value
    if any(k not in values for k in REQUIRED):
        return None
    return PodSample(
        at=at,
        attempt=int(values["attempt"]),
        samples=values["samples"],
        steps=values["steps"],
        step_seconds_sum=values.get("step_seconds_sum", 0.0),
        step_seconds_count=values.get("step_seconds_count", 0.0),
        resumed_from_step=int(values.get("resumed_from_step", -1)),
        checkpoint_step=int(values.get("checkpoint_step", -1)),
        checkpoint_time=values.get("checkpoint_time", 0.0),
        world_size=int(values.get("world_size", 0)),
        procs_per_pod=int(values.get("procs_per_pod", 1)) or 1,
        samples_per_second=values.get("samples_per_second"),
        last_step_time=values.get("last_step_time", 0.0),
        wait_seconds=values.get("wait_seconds", 0.0),
        preflight_seconds=values.get("preflight_seconds", 0.0),
        preflight_bandwidth=values.get("preflight_bandwidth", 0.0),
    )


def sample_pods(pods: list[PodView], limit: int) -> list[PodView]:
    """All pods, or `limit` of them spread evenly over the indices (always rank 0), stable while the gang is."""
    pods = sorted(pods, key=lambda p: p.index)
    if len(pods) <= limit:
        return pods
    step = len(pods) / limit
    return [pods[int(i * step)] for i in range(limit)]


@dataclass
class _Seen:
    """One rank pod's progress as this process saw it (wall times: they go into the job's status)."""

    step: int | None = None
    progressed_at: datetime | None = None  # the first read that showed its current step (None: no step yet)
    answered_at: datetime | None = None


@dataclass
class _JobState:
    uid: str
    attempt: int
    windows: dict[str, deque[PodSample]]
    next_due: float
    last_update: float = float("-inf")
    seen: dict[str, _Seen] = field(default_factory=dict)
    looks_since_progress: int = 0  # rounds since a rank was last seen to advance


def observe_progress(state: _JobState, reads: list[tuple[PodView, PodSample | None]], now: datetime) -> None:
    """Fold one round's reads into each rank's progress: a rank advanced when its global step grew.

    A rank that did not answer keeps what was last seen of it, so a stopped process (SIGSTOP, a wedged
    node) reads as a rank that stopped advancing. Start-up (no step done in this attempt) sets no clock."""
    advanced = False
    for pod, sample in reads:
        if sample is None:
            continue
        seen = state.seen.setdefault(pod.name, _Seen())
        step = telemetry.global_step(sample)
        if sample.steps > 0 and (seen.step is None or step > seen.step or seen.progressed_at is None):
            seen.progressed_at = now
            advanced = True
        seen.step, seen.answered_at = step, now
    state.looks_since_progress = 0 if advanced else state.looks_since_progress + 1


def gang_progress(state: _JobState, pods: list[PodView]) -> GangProgress:
    ranks = []
    for p in pods:
        seen = state.seen.get(p.name, _Seen())
        seconds, intervals = telemetry.rank_step_seconds(state.windows.get(p.name, ()))
        ranks.append(
            RankProgress(
                pod=p.name,
                index=p.index,
                node=p.node,
                step=seen.step,
                progressed_at=seen.progressed_at,
                answered_at=seen.answered_at,
                step_seconds=seconds,
                intervals=intervals,
            )
        )
    return GangProgress(attempt=state.attempt, ranks=tuple(ranks), looks_since_progress=state.looks_since_progress)


class Scraper:
    def __init__(
        self,
        jobs: Jobs,
        settings: ScrapeSettings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.jobs = jobs
        self.settings = settings
        self.clock = clock  # windows and due times
        self.wall = wall  # when ranks were seen to advance: compared with the reconcile's clock
        self._state: dict[JobKey, _JobState] = {}
        self._latest: dict[JobKey, JobTelemetry] = {}

    def latest(self, key: JobKey) -> JobTelemetry | None:
        """The newest numbers of the job's current attempt (None before two scrapes, or when off)."""
        return self._latest.get(key)

    async def run(self) -> None:
        log.info(self.settings.describe())
        if self.settings.source == OFF:
            return
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                started = self.clock()
                try:
                    await self.tick(session)
                except Exception:  # a bug here must not stop the telemetry for good
                    log.exception("trainer scrape round failed")
                await asyncio.sleep(max(TICK - (self.clock() - started), 0.05))

    def running_jobs(self) -> dict[JobKey, Mapping[str, Any]]:
        out: dict[JobKey, Mapping[str, Any]] = {}
        for key, body in self.jobs.caches.jobs():
            if (body.get("status") or {}).get("state") == "Running":
                out[key] = body
        return out

    async def tick(self, session: aiohttp.ClientSession) -> None:
        """One round: forget jobs that stopped running, scrape the jobs that are due."""
        now = self.clock()
        running = self.running_jobs()
        for key in set(self._state) - set(running):
            del self._state[key]
            self._latest.pop(key, None)
        metrics.TRAINER_SCRAPE_JOBS.set(len(running))
        due = []
        for key, body in running.items():
            meta, status = body["metadata"], body.get("status") or {}
            uid, attempt = meta.get("uid", ""), int(status.get("attempt") or 0)
            state = self._state.get(key)
            if state is None or state.uid != uid or state.attempt != attempt:
                # Spread jobs over the interval, so a fleet is not read in one burst.
                offset = zlib.crc32(f"{key[0]}/{key[1]}".encode()) % 1000 / 1000 * self.settings.interval_s
                state = self._state[key] = _JobState(uid, attempt, {}, now + offset)
                self._latest.pop(key, None)
            if state.next_due <= now:
                state.next_due = now + self.settings.interval_s
                due.append((key, body, state))
        if due:
            limit = asyncio.Semaphore(self.settings.concurrency)
            await asyncio.gather(*(self.scrape_job(session, limit, key, body, state) for key, body, state in due))

    async def scrape_job(
        self,
        session: aiohttp.ClientSession,
        limit: asyncio.Semaphore,
        key: JobKey,
        body: Mapping[str, Any],
        state: _JobState,
    ) -> None:
        port = int(((body.get("spec") or {}).get("metrics") or {}).get("port") or 9400)
        pods = [
            p
            for p in self.jobs.pods_of(key, state.uid)
            if p.attempt == state.attempt
            and p.phase == "Running"
            and p.ip
            and not p.terminating
            and self.settings.allows(p.ip)
        ]
        chosen = sample_pods(pods, self.settings.max_pods_per_job)
        samples = await asyncio.gather(*(self.scrape_pod(session, limit, p, port, state.attempt) for p in chosen))
        horizon = self.clock() - self.settings.window_s
        names = {p.name for p in chosen}
        for name in set(state.windows) - {p.name for p in pods}:
            del state.windows[name]
        for name in set(state.seen) - {p.name for p in pods}:
            del state.seen[name]
        for pod, sample in zip(chosen, samples, strict=True):
            if sample is None:
                continue
            window = state.windows.setdefault(pod.name, deque())
            window.append(sample)
            while len(window) > 2 and window[1].at <= horizon:
                window.popleft()  # keep one sample at or before the horizon: the window is full
        windows = {n: w for n, w in state.windows.items() if n in names}
        job = job_view(body)
        replicas = job.spec.replicas if job.spec else len(pods)
        wall = self.wall()
        observe_progress(state, list(zip(chosen, samples, strict=True)), wall)
        progress = gang_progress(state, chosen)
        t = telemetry.job_telemetry(windows, state.attempt, replicas, wall, progress)
        if t is None or t.samples_per_second is None:
            return  # published once complete (a rate needs two reads): one status update, not two
        self._latest[key] = t
        if job.spec is None:
            return
        if health.needs_reconcile(job.spec, job.status, progress, wall):
            self.jobs.enqueue(key)  # a hang, a straggler found or gone: the reconcile decides and acts
        elif t.preflight_seconds is not None and (job.status.preflight or _NO_PREFLIGHT).attempt != state.attempt:
            self.jobs.enqueue(key)  # the attempt's preflight result, not in status yet
        new = telemetry.summarize(job.spec, job.status, job.created, t)
        kind = telemetry.change(telemetry.current(job.status), new)
        now = self.clock()
        if kind is Change.EVENT or (kind is Change.DRIFT and now - state.last_update >= self.settings.min_update_s):
            state.last_update = now
            metrics.TELEMETRY_UPDATES.labels(kind="event" if kind is Change.EVENT else "drift").inc()
            self.jobs.enqueue(key)

    async def scrape_pod(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, pod: PodView, port: int, attempt: int
    ) -> PodSample | None:
        host = f"[{pod.ip}]" if pod.ip and ":" in pod.ip else pod.ip
        url = f"http://{host}:{port}/metrics"
        async with limit:
            started = time.monotonic()
            result = "ok"
            sample: PodSample | None = None
            try:
                async with session.get(url) as response:
                    response.raise_for_status()
                    raw = await response.content.read(MAX_BODY + 1)
                    if len(raw) > MAX_BODY:
                        raise ValueError(f"more than {MAX_BODY} bytes")
                sample = parse_exposition(raw.decode("utf-8", "replace"), self.clock())
                if sample is None or sample.attempt != attempt:
                    result, sample = "invalid", None
            except TimeoutError:
                result = "timeout"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                result = "error"
                log.debug("scraping %s (%s) failed: %s", pod.name, url, exc)
            finally:
                metrics.TRAINER_SCRAPE_DURATION.observe(time.monotonic() - started)
                metrics.TRAINER_SCRAPES.labels(result=result).inc()
        return sample
