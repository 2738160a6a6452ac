"""up / down / status of one local control plane living in one state directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import binaries, components, health, images, nodes, process, realnode, stages
from localcluster import kueue as kueuemod
from localcluster import pki as pkimod
from localcluster.errors import ClusterError
from localcluster.kubeapi import ApiError, KubeApi
from localcluster.layout import Layout, default_dir
from localcluster.ports import pick_free_ports
from localcluster.profiles import POOL_LABEL, Profile, load_profile

Log = Callable[[str], None]
PortPicker = Callable[[int], list[int]]
# Components started after the apiserver; they come up in parallel.
LATE = ("kube-controller-manager", "kube-scheduler", "kwok")
SHM = Path("/dev/shm")
ETCD_DATA_PREFIX = "phalanx-etcd-"
START_TIMEOUT = {"etcd": 30.0, "kube-apiserver": 120.0, "kube-controller-manager": 60.0,
                 "kube-scheduler": 60.0, "kwok": 60.0}  # fmt: skip


@dataclass(frozen=True)
class ClusterInfo:
    dir: Path
    kubeconfig: Path
    profile: str
    node_names: tuple[str, ...]
    api_port: int
    pids: dict[str, int]
    reused: bool
    ready_seconds: float
    logs: Path = field(default=Path())
    kueue_webhook_port: int | None = None  # set when Kueue runs (`up --kueue`)
    kueue_pods_ready_timeout: str | None = None  # its waitForPodsReady timeout, when Kueue runs

    def usage(self) -> str:
        kubectl = binaries.kubectl()
        verb = "already running" if self.reused else f"ready in {self.ready_seconds:.1f}s"
        with_kueue = (
            f", Kueue webhooks on 127.0.0.1:{self.kueue_webhook_port} (waitForPodsReady "
            f"{self.kueue_pods_ready_timeout})"
            if self.kueue_webhook_port
            else ""
        )
        return "\n".join(
            [
                f"cluster {verb}: profile {self.profile}, {len(self.node_names)} nodes, "
                f"https://127.0.0.1:{self.api_port}{with_kueue}, state in {self.dir}",
                f"  export KUBECONFIG={self.kubeconfig}",
                f"  alias kubectl={kubectl}",
                f"  logs: {self.logs}/<component>.log    stop: python -m localcluster down --dir {self.dir}",
            ]
        )


def _resolve(directory: Path | str | None) -> Layout:
    return Layout(Path(directory).resolve() if directory else default_dir().resolve())


def _info(layout: Layout, state: dict[str, Any], reused: bool) -> ClusterInfo:
    return ClusterInfo(
        dir=layout.dir,
        kubeconfig=layout.kubeconfig,
        profile=state["profile"],
        node_names=tuple(state["node_names"]),
        api_port=state["ports"]["kube-apiserver"],
        pids={p["name"]: p["pid"] for p in state["processes"]},
        reused=reused,
        ready_seconds=float(state.get("ready_seconds", 0.0)),
        logs=layout.logs,
        kueue_webhook_port=(state.get("kueue") or {}).get("ports", {}).get("kueue-webhook"),
        kueue_pods_ready_timeout=(state.get("kueue") or {}).get("podsReadyTimeout"),
    )


def _healthy(layout: Layout, state: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the recorded cluster fully runs; and the names of components that do not."""
    procs = state.get("processes") or []
    node_procs = (state.get("real_node") or {}).get("processes") or []
    kueue_procs = (state.get("kueue") or {}).get("processes") or []
    bad = [
        f"{p['name']} not running" for p in [*procs, *node_procs, *kueue_procs] if not process.runs(p["pid"], p["exe"])
    ]
    if state.get("phase") != "ready" or len(procs) != len(components.ORDER):
        return False, [*bad, "an earlier `up` never finished"]
    if not bad and not health.probe("kube-apiserver", state["ports"]["kube-apiserver"], pkimod.Pki(layout.pki)):
        bad.append("kube-apiserver not ready")
    return not bad, bad


def _stop_recorded(layout: Layout, state: dict[str, Any]) -> list[str]:
    """Stop the recorded processes, newest first, by pid; only those still running our binary."""
    stopped = kueuemod.stop(state["kueue"]) if state.get("kueue") else []
    node = state.get("real_node")
    if node is not None:
        realnode.teardown(layout, node.get("sysctls") or {}, log=lambda _: None, processes=node.get("processes"))
        stopped += [p["name"] for p in node.get("processes") or []]
    for proc in reversed(state.get("processes") or []):
        if process.stop(proc["pid"], proc["exe"]):
            stopped.append(proc["name"])
    etcd_data = state.get("etcd_data")
    if etcd_data and Path(etcd_data).name.startswith(ETCD_DATA_PREFIX):
        shutil.rmtree(etcd_data, ignore_errors=True)
    return stopped


def up(
    profile: str = "default",
    directory: Path | str | None = None,
    nodes: int | None = None,
    kueue: bool = False,
    die_with_parent: bool = False,
    port_picker: PortPicker = pick_free_ports,
    log: Log = print,
    kueue_pods_ready_timeout: str | None = None,
) -> ClusterInfo:
    """Start a control plane (or report the one already running in `directory`) and wait until usable.

    kueue: also run Kueue (dev/localcluster/kueue.py); added to a running cluster that lacks it.
    kueue_pods_ready_timeout: Kueue's waitForPodsReady timeout (a Go duration); by default 30s, or 3m for a
    profile with a real node. A Kueue already running keeps the value it was started with.
    die_with_parent: the processes get SIGTERM if the calling process dies (for test fixtures).
    port_picker: returns n ports; replaceable so tests can hand out a port that is already taken.
    """
    layout = _resolve(directory)
    prof = load_profile(profile, nodes)  # bad input fails before anything is touched
    bins = binaries.require()
    ready_timeout = kueue_pods_ready_timeout or (
        kueuemod.PODS_READY_TIMEOUT_REAL_NODE if prof.real_nodes else kueuemod.PODS_READY_TIMEOUT
    )
    kueuemod.duration_seconds(ready_timeout)  # bad input fails before anything is touched
    if kueue:
        bins["kueue"] = kueuemod.binary()
    if prof.real_nodes:
        realnode.require_host()
    layout.claim()
    with layout.lock():
        state = layout.read_state()
        if state is not None:
            ok, bad = _healthy(layout, state)
            if ok:
                names = prof.node_names()
                if state.get("profile") != profile or state.get("node_names") != names:
                    raise ClusterError(
                        f"a cluster with profile {state.get('profile')} ({len(state['node_names'])} nodes) already "
                        f"runs in {layout.dir}; run `python -m localcluster down --dir {layout.dir}` first"
                    )
                if kueue and not state.get("kueue"):
                    _add_kueue(layout, state, die_with_parent, port_picker, log, ready_timeout)
                return _info(layout, state, reused=True)
            stopped = _stop_recorded(layout, state)
            log(
                f"found a stale cluster in {layout.dir} (not usable: {', '.join(bad)}); "
                f"stopped {', '.join(stopped) or 'nothing'} and cleaned it, starting afresh"
            )
        _sweep_orphaned_etcd_data(log)
        kueue_timeout = ready_timeout if kueue else None
        return _Starter(layout, prof, bins, die_with_parent, port_picker, log, kueue_timeout).start()


def _add_kueue(
    layout: Layout, state: dict[str, Any], die_with_parent: bool, port_picker: PortPicker, log: Log,
    pods_ready_timeout: str,
) -> None:  # fmt: skip
    pki = pkimod.Pki(layout.pki)
    api_port = state["ports"]["kube-apiserver"]
    api = KubeApi(api_port, pki.ca_crt, pki.crt("admin"), pki.key("admin"))
    ports = dict(zip(kueuemod.PORT_NAMES, port_picker(len(kueuemod.PORT_NAMES)), strict=True))
    state["kueue"] = kueuemod.start(layout, pki, api, api_port, ports, die_with_parent, log, pods_ready_timeout)
    layout.write_state(state)


def down(directory: Path | str | None = None, log: Log = print) -> list[str]:
    """Stop exactly the processes `up` started here, in reverse order. Logs are kept."""
    layout = _resolve(directory)
    state = layout.read_state()
    if state is None:
        log(f"no cluster recorded in {layout.dir}; nothing to stop")
        return []
    with layout.lock():
        stopped = _stop_recorded(layout, state)
        keep_logs = layout.logs
        for name in ("cluster.json", "kubeconfig", "pids", "pki", "config", "run"):
            path = layout.dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    log(f"stopped {', '.join(stopped) or 'nothing (no process was left)'}; logs kept in {keep_logs}")
    return stopped


def status(directory: Path | str | None = None) -> tuple[bool, str]:
    layout = _resolve(directory)
    state = layout.read_state()
    if state is None:
        return False, f"no cluster in {layout.dir}; start one with `make cluster` (python -m localcluster up)"
    lines = [f"cluster in {layout.dir}: profile {state.get('profile')}, phase {state.get('phase')}"]
    pki = pkimod.Pki(layout.pki)
    peak_kib = 0
    for proc in state.get("processes") or []:
        running = process.runs(proc["pid"], proc["exe"])
        port = state["ports"].get(proc["name"])
        healthy = running and port is not None and health.probe(proc["name"], port, pki)
        word = "healthy" if healthy else ("running, NOT healthy" if running else "DEAD")
        hwm = process.vm_hwm_kib(proc["pid"]) if running else 0
        peak_kib += hwm
        lines.append(
            f"  {proc['name']:<24} pid {proc['pid']:<8} {word:<20} peak RSS {hwm // 1024:>5} MiB  log {proc['log']}"
        )
    for proc in (state.get("kueue") or {}).get("processes") or []:
        running = process.runs(proc["pid"], proc["exe"])
        port = state["kueue"]["ports"]["kueue-health"]
        word = ("healthy" if kueuemod.ready(port) else "running, NOT healthy") if running else "DEAD"
        lines.append(f"  {proc['name']:<24} pid {proc['pid']:<8} {word:<20} log {proc['log']}")
    lines.append(f"  peak RSS of the control plane (sum of VmHWM): {peak_kib // 1024} MiB")
    ok, bad = _healthy(layout, state)
    if ok:
        api = KubeApi(state["ports"]["kube-apiserver"], pki.ca_crt, pki.crt("admin"), pki.key("admin"))
        items = api.get(f"/api/v1/nodes?labelSelector={POOL_LABEL}")["items"]
        lines.append(f"  nodes Ready: {sum(nodes.is_ready(n) for n in items)}/{len(items)}")
        lines.append(f"  export KUBECONFIG={layout.kubeconfig}")
    else:
        lines.append(f"  not usable ({', '.join(bad)}); `python -m localcluster up` cleans it and starts afresh")
    return ok, "\n".join(lines)


def _sweep_orphaned_etcd_data(log: Log, min_age: float = 120.0) -> None:
    """Free the tmpfs data (~120 MiB each) of clusters whose owner was killed before `down` ran.

    Only our own prefix, only dirs no live process names on its command line, and only older than
    min_age so an `up` that made its dir but has not started etcd yet is never raced.
    """
    now = time.time()
    for path in SHM.glob(ETCD_DATA_PREFIX + "*"):
        try:
            if now - path.stat().st_mtime < min_age or process.cmdline_mentions(str(path)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed orphaned etcd data {path} (its cluster was killed without `down`)")


def _etcd_data_dir(layout: Layout) -> Path:
    # tmpfs: etcd's writes then cost no disk I/O, which matters on 2 cores.
    shm = SHM
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=ETCD_DATA_PREFIX, dir=shm))
    path = layout.run / "phalanx-etcd-data"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Starter:
    def __init__(
        self, layout: Layout, prof: Profile, bins: dict[str, Path], die_with_parent: bool,
        port_picker: PortPicker, log: Log, kueue: str | None = None,
    ) -> None:  # fmt: skip
        # kueue: run Kueue with this waitForPodsReady timeout; None: no Kueue.
        self.layout, self.prof, self.bins, self.log, self.kueue = layout, prof, bins, log, kueue
        self.die_with_parent, self.port_picker = die_with_parent, port_picker
        self.popen: dict[str, subprocess.Popen[bytes]] = {}
        self.state: dict[str, Any] = {}

    def start(self) -> ClusterInfo:
        t0 = time.monotonic()
        layout = self.layout
        layout.clean()
        names = self.prof.node_names()
        kwok_config = layout.config / "kwok.yaml"
        stages.write_kwok_config(kwok_config)  # needs Go's module cache: fail before starting anything
        pki = pkimod.create(layout.pki)
        ports = dict(zip(components.PORT_NAMES, self.port_picker(len(components.PORT_NAMES)), strict=True))
        plan = components.Plan(layout, pki, ports, _etcd_data_dir(layout), self.bins, len(names),
                               self.prof.feature_gates, self.prof.runtime_config)  # fmt: skip
        components.write_configs(plan)
        self.plan = plan
        self.state = {
            "profile": self.prof.name,
            "node_names": names,
            "phase": "starting",
            "ports": ports,
            "etcd_data": str(plan.etcd_data),
            "processes": [],
            "versions": binaries.versions(),
        }
        layout.write_state(self.state)
        try:
            if self.prof.real_nodes:
                # Before the apiserver: the bridge and the `kubernetes` Service rule name its port.
                realnode.prepare(layout, ports["kube-apiserver"], self.state)
            self._spawn("etcd")
            self._wait_healthy("etcd")
            self._spawn("kube-apiserver")
            self._wait_healthy("kube-apiserver")
            for name in LATE:
                self._spawn(name)
            api = KubeApi(ports["kube-apiserver"], pki.ca_crt, pki.crt("admin"), pki.key("admin"))
            self._create_nodes(api)
            for name in LATE:
                self._wait_healthy(name)
            self._wait_nodes(api, set(names))
            self._wait_default_sa(api)
            if self.prof.real_nodes:
                node_ports = dict(zip(realnode.PORT_NAMES, self.port_picker(len(realnode.PORT_NAMES)), strict=True))
                node = realnode.RealNode(layout, pki, api, ports["kube-apiserver"], node_ports, self.state,
                                         self.die_with_parent, self.log)  # fmt: skip
                cpu, cuda = ([i.ref for i in images.images(a)] for a in ("cpu", "cuda"))
                node.start(preload=cpu, optional=cuda)
            if self.kueue:
                _add_kueue(layout, self.state, self.die_with_parent, self.port_picker, self.log, self.kueue)
        except BaseException:
            self._abort()
            raise
        self.state["phase"] = "ready"
        self.state["ready_seconds"] = round(time.monotonic() - t0, 2)
        layout.write_state(self.state)
        return _info(layout, self.state, reused=False)

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str) -> None:
        argv = components.argv(self.plan, name)
        env = components.env(self.plan, name, dict(os.environ))
        log = self.layout.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# {' '.join(argv)}\n")
        proc = process.spawn(argv, log, env=env, die_with_parent=self.die_with_parent)
        self.popen[name] = proc
        self.state["processes"].append({"name": name, "pid": proc.pid, "exe": argv[0], "log": str(log)})
        self.layout.write_state(self.state)  # record the pid at once: a killed `up` leaves it findable

    def _check_alive(self) -> None:
        for name, proc in self.popen.items():
            rc = proc.poll()
            if rc is not None:
                raise ClusterError(self._died(name, rc))

    def _died(self, name: str, rc: int) -> str:
        log = self.layout.log(name)
        text = log.read_text(errors="replace") if log.exists() else ""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("# ")]
        if "address already in use" in text:
            port = self.plan.ports[name]
            extra = f" or peer port {self.plan.ports['etcd-peer']}" if name == "etcd" else ""
            return (
                f"{name} could not listen on 127.0.0.1:{port}{extra}: address already in use (another process "
                f"took the port after it was picked); rerun `python -m localcluster up`; log: {log}"
            )
        last = lines[-1][:240] if lines else "(empty log)"
        return f"{name} exited with code {rc} while starting; see {log} (last line: {last})"

    def _wait_healthy(self, name: str) -> None:
        timeout = START_TIMEOUT[name]
        port = self.plan.ports[name]
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while not health.probe(name, port, self.plan.pki, timeout=1.0):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not healthy after {timeout:.0f}s ({health.url(name, port)}); see {self.layout.log(name)}"
                )
            time.sleep(0.1)
        self.log(f"  {name} healthy (+{time.monotonic() - t0:.1f}s)")

    def _abort(self) -> None:
        """Stop what this start launched and forget it; keep logs, pki and config for debugging."""
        _stop_recorded(self.layout, self.state)
        self.layout.state_file.unlink(missing_ok=True)
        shutil.rmtree(self.layout.dir / "pids", ignore_errors=True)
        self.layout.kubeconfig.unlink(missing_ok=True)

    # -- API objects -----------------------------------------------------------------------
    def _create_nodes(self, api: KubeApi) -> None:
        manifests = nodes.profile_manifests(self.prof)

        def create(m: dict[str, Any]) -> None:
            try:
                api.post("/api/v1/nodes", m)
            except ApiError as e:
                if e.status != 409:
                    raise ClusterError(f"creating node {m['metadata']['name']} failed: {e}") from e

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, manifests))
        self.log(f"  {len(manifests)} nodes created (+{time.monotonic() - t0:.1f}s)")

    def _wait_nodes(self, api: KubeApi, expected: set[str]) -> None:
        timeout = 60.0 + 0.2 * len(expected)
        t0 = time.monotonic()
        last_report = t0
        while True:
            self._check_alive()
            items = api.get(f"/api/v1/nodes?labelSelector={POOL_LABEL}")["items"]
            ready = {n["metadata"]["name"] for n in items if nodes.is_ready(n)} & expected
            if ready == expected:
                self.log(f"  {len(expected)} nodes Ready (+{time.monotonic() - t0:.1f}s)")
                return
            now = time.monotonic()
            if now - t0 > timeout:
                missing = sorted(expected - ready)
                raise ClusterError(
                    f"{len(missing)} of {len(expected)} nodes not Ready after {timeout:.0f}s "
                    f"(e.g. {', '.join(missing[:3])}); see {self.layout.log('kwok')} and "
                    f"{self.layout.log('kube-controller-manager')}"
                )
            if now - last_report > 10:
                self.log(f"  nodes Ready: {len(ready)}/{len(expected)}")
                last_report = now
            time.sleep(0.5 if len(expected) < 200 else 2.0)

    def _wait_default_sa(self, api: KubeApi) -> None:
        deadline = time.monotonic() + 60
        while True:
            self._check_alive()
            with contextlib.suppress(ApiError):
                api.get("/api/v1/namespaces/default/serviceaccounts/default")
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    "ServiceAccount default/default not created after 60s; "
                    f"see {self.layout.log('kube-controller-manager')}"
                )
            time.sleep(0.2)
