"""The process node: a Node object, kept Ready, that runs the pods bound to it as local processes.

One main thread owns every pod and process (it alone spawns, signals and reports); a watch thread
keeps a cache of the cluster's pods; a heartbeat thread renews the node's Lease and Ready condition;
an optional thread serves pod logs to the apiserver (`kubectl logs`). See docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from procnode import host, podspec
from procnode.kube import MERGE, ApiError, KubeClient
from procnode.podspec import JSON, EnvError, Outcome, Unsupported

log = logging.getLogger("procnode")

REPO = Path(__file__).resolve().parents[2]
LABEL = "phalanx.dev/process-node"
TAINT = {"key": LABEL, "value": "true", "effect": "NoSchedule"}
HOST_IP = "127.0.0.1"
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
STATUS_EVERY = 30.0
CONFIG_RETRY = 3.0  # seconds between attempts to start a pod whose env or volume is not there yet
PYTHON_NAMES = {"python", "python3", f"python3.{sys.version_info.minor}"}
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class NodeConfig:
    name: str
    state_dir: Path
    cpu: str = "8"
    memory: str = "16Gi"
    pods: str = "110"
    gpus: int = 0
    pod_cidr: str = "127.0.0.0/16"
    # Prepended to every pod's PYTHONPATH: the repo's operator/ and trainers/ (the "image").
    pythonpath: tuple[str, ...] = (str(REPO / "operator"), str(REPO / "trainers"))
    python: str = sys.executable  # what `python`/`python3` in a pod's command run
    delete_node_on_exit: bool = True
    serve_logs: bool = True


@dataclass
class Container:
    name: str
    proc: subprocess.Popen[bytes] | None
    pid: int
    started_at: str
    log_path: Path
    error_file: Path
    tail_on_error: bool
    outcome: Outcome | None = None


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    pod: JSON
    ip: str
    dir: Path
    log_dir: Path
    containers: dict[str, Container] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    kill_at: float | None = None  # set once termination began: when SIGKILL is due
    reported_running: bool = False
    reported_terminal: bool = False
    gone: bool = False  # removed from the API (force-deleted) while we still ran it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def alive(self) -> list[Container]:
        return [c for c in self.containers.values() if c.outcome is None]


class ProcessNode:
    def __init__(self, kube: KubeClient, config: NodeConfig) -> None:
        self.kube = kube
        self.cfg = config
        self.dir = config.state_dir.resolve()
        self.pods_dir = self.dir / "pods"
        self.logs_dir = self.dir / "logs"
        self.claims_dir = self.dir / "claims"
        for d in (self.pods_dir, self.logs_dir, self.claims_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.addresses = host.AddressPool(config.pod_cidr)
        self.shim = host.build_shim(self.dir / "bin")
        self.runs: dict[str, PodRun] = {}
        self.done: set[str] = set()  # uids handled for good (finished, finalized or not ours to run)
        self.retry_at: dict[str, float] = {}
        self.created_mountpoints: list[Path] = []
        self.cache: dict[str, JSON] = {}
        self.cache_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.synced = threading.Event()
        self.node_uid = ""
        self.logs_port = 0
        self.log_index: dict[tuple[str, str, str], tuple[Path, str]] = {}  # (ns, pod, container) -> (log, uid)

    # --- the Node object ---------------------------------------------------------------------
    def node_manifest(self) -> JSON:
        c = self.cfg
        capacity = {"cpu": c.cpu, "memory": c.memory, "pods": c.pods, "ephemeral-storage": "100Gi"}
        labels = {
            "kubernetes.io/hostname": c.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "procnode",
            LABEL: "true",
        }
        if c.gpus:
            capacity["nvidia.com/gpu"] = str(c.gpus)
            labels.update({"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(c.gpus)})
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": c.name,
                "labels": labels,
                "annotations": {"phalanx.dev/process-node": "a test device: pods run as local processes"},
            },
            "spec": {"taints": [TAINT]},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": HOST_IP}],
                "conditions": self._conditions(),
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.logs_port}},
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "v0.0.0-procnode",
                    "containerRuntimeVersion": "procnode://0.1",
                    "kernelVersion": os.uname().release,
                    "osImage": "procnode (local processes)",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kubeProxyVersion": "",
                },
            },
        }

    def _conditions(self) -> list[JSON]:
        t = podspec.now()
        conds = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return [
            {"type": k, "status": s, "reason": r, "message": "procnode", "lastHeartbeatTime": t,
             "lastTransitionTime": t}
            for k, s, r in conds
        ]  # fmt: skip

    def register(self) -> None:
        manifest = self.node_manifest()
        path = f"/api/v1/nodes/{self.cfg.name}"
        try:
            node = self.kube.create("/api/v1/nodes", manifest)
        except ApiError as e:
            if e.status != 409:
                raise
            # Ours from an earlier run: take it over (labels, taint, status).
            node = self.kube.patch(path, {"metadata": {"labels": manifest["metadata"]["labels"]},
                                          "spec": {"taints": [TAINT], "unschedulable": None}}, MERGE)  # fmt: skip
            self.kube.patch(f"{path}/status", {"status": manifest["status"]}, MERGE)
        self.node_uid = node["metadata"]["uid"]
        self._renew_lease()
        log.info("node %s registered (cpu %s, memory %s, gpus %s)", self.cfg.name, self.cfg.cpu, self.cfg.memory,
                 self.cfg.gpus)  # fmt: skip

    def _renew_lease(self) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.cfg.name}"
        spec = {"holderIdentity": self.cfg.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
        try:
            self.kube.patch(path, {"spec": spec}, MERGE)
        except ApiError as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.cfg.name, "uid": self.node_uid}
            body = {"metadata": {"name": self.cfg.name, "ownerReferences": [owner]}, "spec": spec}
            self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)

    def _heartbeat(self) -> None:
        last_status = 0.0
        while not self.stopping.wait(LEASE_RENEW if last_status else 0):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    body = {"status": {"conditions": self._conditions()}}
                    self.kube.patch(f"/api/v1/nodes/{self.cfg.name}/status", body)
                    last_status = time.monotonic()
            except (ApiError, OSError) as e:
                log.warning("heartbeat failed (will retry): %s", e)
                last_status = last_status or 1.0

    # --- the pod cache (watch thread) ------------------------------------------------------------
    def _watch(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.kube.get("/api/v1/pods")
                with self.cache_lock:
                    self.cache = {p["metadata"]["uid"]: p for p in listing["items"]}
                self.synced.set()
                self.wake.set()
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.kube.watch("/api/v1/pods", rv):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        with self.cache_lock:
                            if event["type"] == "DELETED":
                                self.cache.pop(obj["metadata"]["uid"], None)
                            else:
                                self.cache[obj["metadata"]["uid"]] = obj
                        self.wake.set()
            except (ApiError, OSError, ValueError) as e:
                if not self.stopping.is_set():
                    log.info("pod watch ended (%s); listing again", e)
                    time.sleep(0.5)

    # --- main loop -----------------------------------------------------------------------------
    def start(self) -> None:
        """Register, start the background threads and wait for the first pod listing."""
        if self.cfg.serve_logs:
            from procnode.logs import serve_logs

            self.logs_port = serve_logs(self, self.dir / "tls")
        self.register()
        for target in (self._heartbeat, self._watch):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()
        if not self.synced.wait(30):
            raise host.HostError("could not list pods from the apiserver in 30s")

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(0.2)
            self.wake.clear()
            try:
                self.sync()
            except Exception:
                log.exception("sync failed; retrying")
                time.sleep(1)

    def snapshot(self) -> list[JSON]:
        with self.cache_lock:
            return list(self.cache.values())

    def sync(self) -> None:
        pods = self.snapshot()
        mine = {p["metadata"]["uid"]: p for p in pods if (p.get("spec") or {}).get("nodeName") == self.cfg.name}
        for uid, pod in mine.items():
            run = self.runs.get(uid)
            if run is not None:
                run.pod = pod
                if pod["metadata"].get("deletionTimestamp") and run.kill_at is None:
                    self._begin_termination(run)
            elif uid not in self.done and time.monotonic() >= self.retry_at.get(uid, 0):
                self._admit(pod)
        for uid, run in list(self.runs.items()):
            if uid not in mine and not run.gone:
                run.gone = True  # force-deleted, or finalized by us
                if run.alive():
                    self._begin_termination(run)
            self._poll(run)
        self._refresh_hosts(pods)

    # --- starting pods ---------------------------------------------------------------------------
    def _admit(self, pod: JSON) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            self._finalize(ns, name, uid)  # deleted before it ever ran here
            return
        phase = status.get("phase") or "Pending"
        if phase in TERMINAL:
            self.done.add(uid)
            return
        if phase != "Pending":
            # Ran under an earlier procnode process; its processes died with it (parent-death signal).
            lost = podspec.failed_status("NodeLost", "procnode restarted; the pod's processes are gone")
            self._patch_status(ns, name, uid, lost)
            self.done.add(uid)
            return
        ip = self.addresses.allocate(r.ip for r in self.runs.values())
        pod_dir = self.pods_dir / f"{ns}_{name}_{uid}"
        run = PodRun(uid=uid, namespace=ns, name=name, pod=pod, ip=ip, dir=pod_dir,
                     log_dir=self.logs_dir / f"{ns}_{name}_{uid}")  # fmt: skip
        try:
            plans = self._plan(run)
        except Unsupported as e:
            self._patch_status(ns, name, uid, podspec.failed_status("Unsupported", str(e)))
            self.done.add(uid)
            log.info("%s/%s: not run: %s", ns, name, e)
            return
        except EnvError as e:
            self.retry_at[uid] = time.monotonic() + CONFIG_RETRY
            self._patch_status(ns, name, uid, _waiting(pod, "CreateContainerConfigError", str(e)))
            log.info("%s/%s: not started yet: %s", ns, name, e)
            return
        self.retry_at.pop(uid, None)
        self.runs[uid] = run
        self._refresh_hosts(self.snapshot())
        for cname, plan in plans.items():
            run.containers[cname] = self._spawn(run, cname, plan)
        self._poll(run)  # reports Running (or, if a container could not start, the end)
        log.info("%s/%s: started at %s: %s", ns, name, ip,
                 "; ".join(f"{c.name} pid {c.pid}" for c in run.containers.values()))  # fmt: skip

    def _plan(self, run: PodRun) -> dict[str, JSON]:
        """The sandbox spec of each container; raises EnvError while something it needs is missing."""
        pod = run.pod
        spec = pod["spec"]
        if spec.get("initContainers"):
            raise Unsupported("initContainers are not supported by procnode")
        plans: dict[str, JSON] = {}
        run.dir.mkdir(parents=True, exist_ok=True)
        run.log_dir.mkdir(parents=True, exist_ok=True)
        hostname = spec.get("hostname") or run.name
        (run.dir / "hostname").write_text(hostname + "\n")
        (run.dir / "hosts").touch()
        meta = pod["metadata"]
        about = {"uid": run.uid, "namespace": run.namespace, "name": run.name, "ip": run.ip, "started": podspec.now(),
                 "labels": meta.get("labels") or {}}  # fmt: skip
        (run.log_dir / "pod.json").write_text(json.dumps(about, indent=1))
        for c in spec["containers"]:
            env, notes = podspec.resolve_env(pod, c, run.ip, HOST_IP, self._lookup)
            mounts, vnotes = podspec.mounts_for(c, spec.get("volumes") or [], lambda v: self._volume_source(run, v))
            for m in mounts:
                self._ensure_mountpoint(Path(m.target), is_file=m.kind == "bind" and Path(m.source).is_file())
            cwd = c.get("workingDir") or str(run.dir / "work")
            Path(cwd).mkdir(parents=True, exist_ok=True)
            argv = podspec.command_line(c, env)
            if argv and argv[0] in PYTHON_NAMES:
                argv[0] = self.cfg.python
            full_env = self._process_env(run, hostname, env)
            log_path = run.log_dir / f"{c['name']}.log"
            with open(log_path, "ab") as fh:
                for note in [*notes, *vnotes]:
                    fh.write(f"procnode: {note}\n".encode())
            plans[c["name"]] = {
                "hostname": hostname,
                "hosts_file": str(run.dir / "hosts"),
                "hostname_file": str(run.dir / "hostname"),
                "mounts": [m.to_json() for m in mounts],
                "cwd": cwd,
                "argv": argv,
                "env": full_env,
                "error_file": str(run.dir / f"{c['name']}.start-error"),
                "log": str(log_path),
                "tail_on_error": c.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            }
        return plans

    def _process_env(self, run: PodRun, hostname: str, env: Mapping[str, str]) -> dict[str, str]:
        """What a container gets: a minimal base (no host env leaks in), the pod's env, and the node's
        additions (the "image" PYTHONPATH, the bind shim and the pod's address)."""
        base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(run.dir / "work"),
            "HOSTNAME": hostname,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        out = {**base, **env}
        pythonpath = [*self.cfg.pythonpath, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        out["PYTHONPATH"] = os.pathsep.join(pythonpath)
        out["LD_PRELOAD"] = " ".join(filter(None, [str(self.shim), env.get("LD_PRELOAD", "")]))
        out["PROCNODE_POD_IP"] = run.ip
        return out

    def _lookup(self, kind: str, ns: str, name: str) -> dict[str, str] | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        try:
            obj = self.kube.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        data: dict[str, str] = dict(obj.get("data") or {})
        if kind == "Secret":
            import base64

            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return data

    def _volume_source(self, run: PodRun, vol: JSON) -> str | None:
        if "emptyDir" in vol:
            path = run.dir / "volumes" / vol["name"]
        elif "hostPath" in vol:
            path = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, "") and not path.exists():
                path.mkdir(parents=True, exist_ok=True)
        elif "persistentVolumeClaim" in vol:
            path = self._claim_dir(run.namespace, vol["persistentVolumeClaim"]["claimName"])
        else:
            return None
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _claim_dir(self, ns: str, claim: str) -> Path:
        """A claim bound to a hostPath (or local) PV: that path; else a directory per claim here."""
        try:
            pvc = self.kube.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        except ApiError as e:
            if e.status == 404:
                raise EnvError(f"persistentvolumeclaim {ns}/{claim} not found") from e
            raise
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            raise EnvError(f"persistentvolumeclaim {ns}/{claim} is not bound yet")
        pv = self.kube.get(f"/api/v1/persistentvolumes/{pv_name}")
        pv_spec = pv.get("spec") or {}
        source = (pv_spec.get("hostPath") or pv_spec.get("local") or {}).get("path")
        return Path(source) if source else self.claims_dir / ns / claim

    def _ensure_mountpoint(self, target: Path, is_file: bool) -> None:
        """A mount needs its target to exist; one created here is removed at exit if still empty."""
        if target.exists():
            return
        missing = target
        while not missing.parent.exists():
            missing = missing.parent
        if is_file:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
        self.created_mountpoints.append(missing)
        log.info("created mount point %s on the host (removed at exit if empty)", missing)

    def _spawn(self, run: PodRun, name: str, plan: JSON) -> Container:
        spec_path = run.dir / f"{name}.sandbox.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the pod's env
        with os.fdopen(fd, "w") as fh:
            json.dump(plan, fh)
        Path(plan["error_file"]).unlink(missing_ok=True)
        log_path = Path(plan["log"])
        t = podspec.now()
        c = Container(name=name, proc=None, pid=0, started_at=t, log_path=log_path,
                      error_file=Path(plan["error_file"]), tail_on_error=plan["tail_on_error"])  # fmt: skip
        self.log_index[(run.namespace, run.name, name)] = (log_path, run.uid)
        if not plan["argv"]:
            msg = "procnode needs the container's command (it has no images)"
            c.outcome = Outcome(128, "StartError", t, t, message=msg)
            return c
        argv = [
            "setpriv", "--pdeathsig", "KILL", "--",  # the pod dies with the node, as on a real node
            "unshare", "--mount", "--uts", "--propagation", "private", "--",
            sys.executable, "-m", "procnode.sandbox", str(spec_path),
        ]  # fmt: skip
        helper_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).parents[1])}
        with open(log_path, "ab") as out:
            try:
                c.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=helper_env,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
            except OSError as e:
                c.outcome = Outcome(128, "StartError", t, t, message=f"procnode could not start the sandbox: {e}")
                return c
        c.pid = c.proc.pid
        return c

    # --- running and ending pods ---------------------------------------------------------------
    def _begin_termination(self, run: PodRun) -> None:
        grace = run.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = run.pod["spec"].get("terminationGracePeriodSeconds", 30)
        run.kill_at = time.monotonic() + max(int(grace), 0)
        for c in run.alive():
            self._signal(c, signal.SIGTERM)
        if run.alive():
            log.info("%s: SIGTERM sent, SIGKILL in %ss", run.key, grace)

    def _signal(self, c: Container, sig: signal.Signals) -> None:
        """Signal the container's process group (it is a session we created for it; pid == pgid)."""
        if c.proc is None or c.pid <= 0:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.pid, sig)

    def _poll(self, run: PodRun) -> None:
        for c in run.alive():
            assert c.proc is not None
            rc = c.proc.poll()
            if rc is None:
                continue
            self._signal(c, signal.SIGKILL)  # stragglers of the group go with the main process
            c.outcome = self._outcome(c, rc)
            log.info("%s: container %s exited with code %s (%s)", run.key, c.name, c.outcome.exit_code,
                     c.outcome.reason)  # fmt: skip
        if run.kill_at is not None and run.alive() and time.monotonic() >= run.kill_at:
            for c in run.alive():
                log.info("%s: grace period over, SIGKILL to %s", run.key, c.name)
                self._signal(c, signal.SIGKILL)
            run.kill_at = float("inf")
        if run.alive():
            if not run.reported_running and not run.gone and all(c.proc is not None for c in run.containers.values()):
                started = {c.name: (c.pid, c.started_at) for c in run.containers.values()}
                body = podspec.running_status(run.pod, run.ip, HOST_IP, started)
                run.reported_running = self._patch_status(run.namespace, run.name, run.uid, body)
            return
        if not run.reported_terminal and not run.gone:
            outcomes = {n: c.outcome for n, c in run.containers.items() if c.outcome is not None}
            run.reported_terminal = self._patch_status(
                run.namespace, run.name, run.uid, podspec.terminal_status(run.pod, outcomes, run.ip, HOST_IP)
            )
            if not run.reported_terminal:
                return
        deleting = bool(run.pod["metadata"].get("deletionTimestamp"))
        if run.gone or (deleting and self._finalize(run.namespace, run.name, run.uid)):
            self._forget(run)

    def _outcome(self, c: Container, rc: int) -> Outcome:
        t = podspec.now()
        if c.error_file.exists():
            msg = c.error_file.read_text().strip()
            return Outcome(128, "StartError", c.started_at, t, pid=c.pid, message=msg)
        code = podspec.exit_code(rc)
        message = _tail(c.log_path) if code != 0 and c.tail_on_error else ""
        return Outcome(code, podspec.terminated_reason(code), c.started_at, t, pid=c.pid, message=message)

    def _finalize(self, ns: str, name: str, uid: str) -> bool:
        """What the kubelet does last: delete the pod object for good (grace 0, only this uid)."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}", body)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("%s/%s: final delete failed (will retry): %s", ns, name, e)
                return False
        self.done.add(uid)
        return True

    def _forget(self, run: PodRun) -> None:
        self.runs.pop(run.uid, None)
        self.done.add(run.uid)
        shutil.rmtree(run.dir, ignore_errors=True)  # emptyDirs go with the pod; logs stay
        log.info("%s: gone", run.key)

    def _patch_status(self, ns: str, name: str, uid: str, body: JSON) -> bool:
        """Patch the pod's status; the uid in the body makes it a precondition (a newer pod of the
        same name, e.g. the next gang attempt, is never written with this one's status)."""
        body = {**body, "metadata": {"uid": uid}}
        try:
            self.kube.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", body)
            return True
        except ApiError as e:
            if e.status == 404 or (e.status == 422 and "metadata.uid" in str(e)):
                return True  # gone, or replaced by another pod of that name: nothing left to report to
            if e.status in (400, 422):
                log.error("%s/%s: status update rejected (not retried): %s", ns, name, e)
                return True
            log.warning("%s/%s: status update failed (will retry): %s", ns, name, e)
            return False

    # --- names -------------------------------------------------------------------------------------
    def _refresh_hosts(self, pods: list[JSON]) -> None:
        """Rewrite each running pod's hosts file from the namespace's pods and their addresses
        (ours: the address we gave; others: status.podIP), as cluster DNS would answer."""
        local_ip = {r.uid: r.ip for r in self.runs.values() if not r.reported_terminal}
        peers: list[tuple[JSON, str]] = []
        for p in pods:
            uid = p["metadata"]["uid"]
            phase = (p.get("status") or {}).get("phase")
            ip = local_ip.get(uid) or ((p.get("status") or {}).get("podIP") if phase not in TERMINAL else None)
            if ip:
                peers.append((p, ip))
        for run in self.runs.values():
            if not run.alive() and run.containers:
                continue
            desired = podspec.hosts_lines(run.pod, run.ip, peers)
            lines = host.merge_lines(run.hosts, desired)
            if lines != run.hosts:
                host.write_lines(run.dir / "hosts", run.hosts, lines)
                run.hosts = lines

    # --- shutdown --------------------------------------------------------------------------------
    def shutdown(self, grace: float = 15.0) -> None:
        """Stop every pod (SIGTERM, then SIGKILL after `grace`), mark them Failed, remove the node."""
        self.stopping.set()
        for run in self.runs.values():
            for c in run.alive():
                self._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.proc is not None and c.proc.poll() is None for r in self.runs.values() for c in r.alive()):
            if time.monotonic() > deadline:
                for run in self.runs.values():
                    for c in run.alive():
                        self._signal(c, signal.SIGKILL)
                break
            time.sleep(0.1)
        for run in self.runs.values():
            for c in run.alive():
                if c.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        c.proc.wait(5)
            if not run.reported_terminal and not run.gone:
                msg = "Pod was terminated because its process node shut down."
                self._patch_status(run.namespace, run.name, run.uid, podspec.failed_status("Terminated", msg))
        if self.cfg.delete_node_on_exit:
            with contextlib.suppress(ApiError, OSError):
                self.kube.delete(f"/api/v1/nodes/{self.cfg.name}")
        for path in reversed(self.created_mountpoints):
            with contextlib.suppress(OSError):
                _remove_empty_tree(path)
        log.info("node %s stopped", self.cfg.name)


def _waiting(pod: JSON, reason: str, message: str) -> JSON:
    statuses = [
        {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
         "state": {"waiting": {"reason": reason, "message": message}}}
        for c in pod["spec"]["containers"]
    ]  # fmt: skip
    return {"status": {"containerStatuses": statuses}}


def _tail(path: Path, limit: int = 2048) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _remove_empty_tree(path: Path) -> None:
    """rmdir path and its subdirectories, bottom up, only where empty."""
    if not path.is_dir() or path.is_symlink():
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
        return
    for child in path.iterdir():
        _remove_empty_tree(child)
    path.rmdir()
