"""The operator's trainer scraper: settings validation, parsing real trainer expositions, and a scrape
round against real HTTP endpoints on 127.0.0.x (one address per pod, as pod IPs are)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.process_collector import ProcessCollector

from phalanx.controller import scraper as sc
from phalanx.controller.caches import Caches
from phalanx.controller.scraper import ConfigError, Scraper, ScrapeSettings
from phalanx.core import health
from phalanx.core import telemetry as tm
from phalanx.core.model import PodView
from phalanx.core.observe import job_view
from phalanx_trainer.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]


def trainer_text(
    samples: int = 0,
    attempt: int = 1,
    world: int = 2,
    checkpoint: int | None = None,
    step_s: float = 0.01,
    wait_s: float = 0.0,
) -> str:
    """The exposition the real trainer runtime serves (process metrics and histograms included)."""
    m = TrainerMetrics(local_world_size=1)
    ProcessCollector(registry=m.registry)
    m.set_identity(world_size=world, rank=0, attempt=attempt, procs_per_pod=1)
    for _ in range(samples // 32):
        m.observe_step(step_s, 32, wait_s)
    m.set_resumed_from(100 if attempt > 1 else None)
    if checkpoint is not None:
        m.observe_checkpoint(checkpoint, 0.5, timestamp=1_767_225_600.0)
    return generate_latest(m.registry).decode()


# --- settings -------------------------------------------------------------------------------------


def test_defaults_scrape() -> None:
    s = ScrapeSettings.from_env({})
    assert s.source == "scrape" and s.interval_s == 15 and s.window_s == 60
    assert "scraping trainer pods directly" in s.describe() and "not Prometheus" in s.describe()


def test_off_is_explicit() -> None:
    s = ScrapeSettings.from_env({"PHALANX_TELEMETRY": "off"})
    assert s.source == "off" and "telemetry: off" in s.describe()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PHALANX_TELEMETRY": "prometheus"}, "does not read trainer metrics from Prometheus"),
        ({"PHALANX_TELEMETRY": "scrap"}, "is not one of scrape, off"),
        ({"PHALANX_PROMETHEUS_URL": "http://prometheus:9090"}, "never queries Prometheus"),
        ({"PHALANX_SCRAPE_INTERVAL_SECONDS": "soon"}, "is not a number"),
        ({"PHALANX_SCRAPE_INTERVAL_SECONDS": "0"}, "outside 1..3600"),
        ({"PHALANX_SCRAPE_INTERVAL_SECONDS": "30", "PHALANX_SCRAPE_WINDOW_SECONDS": "40"}, "outside 60..86400"),
    ],
)
def test_misconfiguration_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScrapeSettings.from_env(env)


def test_operator_refuses_to_start_when_told_to_read_prometheus(tmp_path: Path) -> None:
    # No cluster needed: the settings are checked while the operator is built, before kopf connects.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainers")]),
        "KUBECONFIG": str(tmp_path / "missing"),
        "PHALANX_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
    }
    res = subprocess.run(
        [sys.executable, "-m", "phalanx.controller"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode != 0
    assert "PHALANX_PROMETHEUS_URL is set, but the operator never queries Prometheus" in res.stderr


# --- parsing --------------------------------------------------------------------------------------


def test_parse_a_real_trainer_exposition() -> None:
    text = trainer_text(samples=640, attempt=2, world=4, checkpoint=150)
    assert "process_cpu_seconds_total" in text and "phalanx_trainer_step_duration_seconds_bucket" in text
    s = sc.parse_exposition(text, at=5.0)
    assert s is not None
    assert (s.at, s.attempt, s.samples, s.steps) == (5.0, 2, 640.0, 20.0)
    assert s.step_seconds_count == 20 and s.step_seconds_sum == pytest.approx(0.2)
    assert (s.resumed_from_step, s.checkpoint_step, s.checkpoint_time) == (100, 150, 1_767_225_600.0)
    assert (s.world_size, s.procs_per_pod) == (4, 1)
    # Per-rank views (kubectl phalanx status): the pod's own rate and when its last step ended.
    assert s.samples_per_second == pytest.approx(32 / 0.01) and s.last_step_time > 1_700_000_000


def test_parse_something_else_is_none() -> None:
    assert sc.parse_exposition("# HELP up x\n# TYPE up gauge\nup 1\n", at=0) is None
    assert sc.parse_exposition("", at=0) is None


def test_big_gangs_are_sampled_evenly_with_rank_zero() -> None:
    pods = [PodView(name=f"p{i}", index=i, attempt=1, phase="Running") for i in range(64)]
    chosen = sc.sample_pods(list(reversed(pods)), 8)
    assert [p.index for p in chosen] == [0, 8, 16, 24, 32, 40, 48, 56]
    assert len(sc.sample_pods(pods[:5], 8)) == 5


# --- one scrape round against real endpoints -----------------------------------------------------


class FakeOperator:
    """The two things the scraper uses of the operator: its caches and its work queue."""

    def __init__(self, body: dict[str, Any], pods: list[PodView]) -> None:
        self.body = body
        self.pods = pods
        self.caches = Caches({"job_index": {("ns", "j"): [body]}})
        self.queued: list[tuple[str, str]] = []

    def pods_of(self, key: tuple[str, str], uid: str) -> list[PodView]:
        return list(self.pods)

    def enqueue(self, key: tuple[str, str]) -> None:
        self.queued.append(key)


def reconcile_and_write(body: dict[str, Any], t: tm.JobTelemetry) -> None:
    """What the operator does with a queued job: fold the telemetry into status and write it."""
    job = job_view(body)
    assert job.spec is not None
    tm.apply(job.status, job.spec, job.created, t)
    body["status"] = job.status.model_dump(by_alias=True, mode="json", exclude_none=True)


def job_body(port: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "framework": "pytorch",
            "replicas": 2,
            "metrics": {"port": port},
            "template": {"spec": {"containers": [{"name": "trainer", "image": "t"}]}},
        },
        "status": {"state": "Running", "attempt": 1, **(status or {})},
    }


async def serve(texts: dict[str, Callable[[], str]], port: int) -> list[web.AppRunner]:
    runners = []
    for ip, text in texts.items():

        async def metrics(_: web.Request, text: Callable[[], str] = text) -> web.Response:
            return web.Response(text=text(), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, ip, port).start()
        runners.append(runner)
    return runners


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_scrape_round_sums_pods_and_queues_only_material_changes() -> None:
    async def scenario() -> None:
        port = free_port()
        samples = {"127.0.0.2": 0, "127.0.0.3": 0}
        texts = {ip: (lambda ip=ip: trainer_text(samples=samples[ip], world=2)) for ip in samples}
        runners = await serve(texts, port)
        pods = [
            PodView(name=f"j-worker-{i}", index=i, attempt=1, phase="Running", ip=ip) for i, ip in enumerate(samples)
        ]
        op = FakeOperator(job_body(port), pods)
        clock = [1000.0]
        settings = ScrapeSettings(interval_s=10, window_s=60, min_update_s=60)
        scraper = Scraper(op, settings, clock=lambda: clock[0])
        written = 0
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(12):  # two minutes of fake time, one tick per 10 s
                    await scraper.tick(session)
                    for ip in samples:
                        samples[ip] += 320  # 32 samples/s per pod
                    clock[0] += 10
                    t = scraper.latest(("ns", "j"))
                    if t is not None and len(op.queued) > written:
                        written = len(op.queued)
                        reconcile_and_write(op.body, t)
        finally:
            for r in runners:
                await r.cleanup()
        t = scraper.latest(("ns", "j"))
        assert t is not None and t.pods_reporting == 2 and t.replicas == 2
        assert t.samples_per_second == pytest.approx(64.0)
        assert op.body["status"]["throughput"]["samplesPerSecond"] == 64.0
        assert op.body["status"]["throughput"]["scalingEfficiency"] == 1.0
        # One update when the numbers appeared; steady numbers afterwards cost nothing.
        assert op.queued == [("ns", "j")]

    asyncio.run(scenario())


def test_a_stopped_job_is_forgotten_and_a_dead_endpoint_counts_as_error() -> None:
    async def scenario() -> None:
        port = free_port()
        pods = [PodView(name="j-worker-0", index=0, attempt=1, phase="Running", ip="127.0.0.9")]  # nobody listens
        op = FakeOperator(job_body(port), pods)
        clock = [1e6]
        scraper = Scraper(op, ScrapeSettings(interval_s=1, window_s=2), clock=lambda: clock[0])
        before = sc.metrics.TRAINER_SCRAPES.labels(result="error")._value.get()
        async with aiohttp.ClientSession() as session:
            await scraper.tick(session)  # the job is seen, and due within one interval
            clock[0] += 1
            await scraper.tick(session)
            assert sc.metrics.TRAINER_SCRAPES.labels(result="error")._value.get() == before + 1
            assert scraper.latest(("ns", "j")) is None
            op.body["status"]["state"] = "Succeeded"
            await scraper.tick(session)
        assert not scraper._state and op.queued == []

    asyncio.run(scenario())


def test_scrape_networks_limit_which_pod_addresses_are_contacted() -> None:
    from phalanx.controller.scraper import ConfigError, ScrapeSettings

    s = ScrapeSettings.from_env({"PHALANX_SCRAPE_NETWORKS": "127.0.0.0/8"})
    assert s.allows("127.0.0.7") and not s.allows("10.64.0.3") and not s.allows("not-an-ip")
    assert ScrapeSettings.from_env({}).allows("10.64.0.3")  # unset: any (a real cluster's pod network)
    import pytest

    with pytest.raises(ConfigError, match="PHALANX_SCRAPE_NETWORKS"):
        ScrapeSettings.from_env({"PHALANX_SCRAPE_NETWORKS": "10.0.0.0/33"})


# --- health: each rank's progress and step time -------------------------------------------------------


def health_rounds(
    texts: dict[str, Callable[[], str]], spec: dict[str, Any], ticks: int, advance: Callable[[int], None]
) -> list[tuple[bool, tm.JobTelemetry | None]]:
    """`ticks` scrape rounds 10 s apart (fake monotonic and wall clocks) against real endpoints, the
    job's status written as the reconcile would; per round: whether it queued the job, and its telemetry."""
    from datetime import timedelta

    from phalanx.core.observe import parse_time

    async def scenario() -> list[tuple[bool, tm.JobTelemetry | None]]:
        port = free_port()
        runners = await serve(texts, port)
        pods = [
            PodView(name=f"j-worker-{i}", index=i, attempt=1, phase="Running", ip=ip, node=f"node-{i}")
            for i, ip in enumerate(texts)
        ]
        body = job_body(port)
        body["spec"].update(spec)
        op = FakeOperator(body, pods)
        clock = [1000.0]
        t0 = parse_time("2026-01-01T00:00:00Z")
        assert t0 is not None
        scraper = Scraper(
            op,
            ScrapeSettings(interval_s=10, window_s=60, min_update_s=60, timeout_s=1),
            clock=lambda: clock[0],
            wall=lambda: t0 + timedelta(seconds=clock[0] - 1000.0),
        )
        rounds: list[tuple[bool, tm.JobTelemetry | None]] = []
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(ticks):
                    before = len(op.queued)
                    await scraper.tick(session)
                    t = scraper.latest(("ns", "j"))
                    rounds.append((len(op.queued) > before, t))
                    if t is not None and len(op.queued) > before:
                        reconcile_and_write(op.body, t)
                    advance(i)
                    clock[0] += 10
        finally:
            for r in runners:
                await r.cleanup()
        return rounds

    return asyncio.run(scenario())


def test_a_rank_that_stops_answering_is_a_hang_after_the_deadline_and_is_named() -> None:
    steps = {"127.0.0.2": 0, "127.0.0.3": 0}
    stopped = {"127.0.0.3": False}

    def text(ip: str) -> str:
        if stopped.get(ip):
            raise web.HTTPServiceUnavailable()  # as good as a SIGSTOPped process for the scraper
        return trainer_text(samples=steps[ip], world=2)

    def advance(i: int) -> None:
        if i < 4:  # training for 40 s, then worker-1 stops and worker-0 blocks in the all-reduce
            for ip in steps:
                steps[ip] += 320
        stopped["127.0.0.3"] = i >= 4

    texts = {ip: (lambda ip=ip: text(ip)) for ip in steps}
    rounds = health_rounds(texts, {"runPolicy": {"progressDeadlineSeconds": 30}}, 10, advance)
    verdicts = [health.hang(t.progress, 30, t.observed_at) if t and t.progress else None for _, t in rounds]
    # The last advance is seen in round 4 (t=40 s): from round 7 (t=70 s) on it is a hang, and queued.
    assert [v is not None for v in verdicts] == [False] * 7 + [True] * 3
    assert all(queued for queued, _ in rounds[7:])
    last = verdicts[-1]
    assert last is not None and last.first.pod == "j-worker-1" and last.step == 40 and last.seconds == 50


def test_the_slow_rank_is_named_from_step_time_less_collective_wait() -> None:
    steps = {"127.0.0.2": 0, "127.0.0.3": 0}
    # Lockstep: both ranks' steps take 30 ms; worker-0 spends 20 ms of it waiting for worker-1.
    texts = {
        "127.0.0.2": lambda: trainer_text(samples=steps["127.0.0.2"], step_s=0.03, wait_s=0.02),
        "127.0.0.3": lambda: trainer_text(samples=steps["127.0.0.3"], step_s=0.03, wait_s=0.0),
    }

    def advance(i: int) -> None:
        for ip in steps:
            steps[ip] += 320

    rounds = health_rounds(texts, {}, 7, advance)
    named = [
        [s.rank.pod for s in health.stragglers(t.progress.ranks, 1.5)] if t and t.progress else [] for _, t in rounds
    ]
    # The first read is in round 1 (jobs are spread over the interval); judged once the window holds
    # health.MIN_INTERVALS intervals (from round 4), then every round, and queued each time.
    assert named == [[]] * 4 + [["j-worker-1"]] * 3
    assert all(queued for queued, _ in rounds[4:])
    t = rounds[-1][1]
    assert t is not None and t.progress is not None
    [slow] = health.stragglers(t.progress.ranks, 1.5)
    assert (slow.rank.node, round(slow.ratio, 1)) == ("node-1", 3.0)
