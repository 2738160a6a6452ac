"""Pure functions from a pod (a dict as the API returns it) to what the node runs and reports.

No I/O here: env resolution, `$(VAR)` expansion, the hosts file, the volume plan and the status
bodies are all computed from their inputs, so they are unit-tested without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]
CLUSTER_DOMAIN = "cluster.local"
# Looks a ConfigMap or Secret up: (kind, namespace, name) -> its string data, or None if absent.
Lookup = Callable[[str, str, str], Mapping[str, str] | None]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- env ---------------------------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` escapes, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


class EnvError(Exception):
    """An env source the pod requires (not optional) is missing: the kubelet's CreateContainerConfigError."""


class Unsupported(Exception):
    """The pod needs something procnode does not do (e.g. init containers): it fails at once."""


def _field(pod: JSON, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise EnvError(f"fieldRef {path} is not supported by procnode")


def resolve_env(
    pod: JSON, container: JSON, pod_ip: str, host_ip: str, lookup: Lookup
) -> tuple[dict[str, str], list[str]]:
    """The container's env as the kubelet computes it, and notes about what was skipped."""
    ns = (pod.get("metadata") or {}).get("namespace", "")
    env: dict[str, str] = {}
    notes: list[str] = []
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or source.get("secretRef")
        if ref is None:
            continue
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        data = lookup(kind, ns, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise EnvError(f"{kind.lower()} {ns}/{ref['name']} not found (envFrom)")
        prefix = source.get("prefix", "")
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = _field(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
            ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
            data = lookup(kind, ns, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise EnvError(f"{kind.lower()} {ns}/{ref['name']} key {ref['key']} not found (env {name})")
            env[name] = data[ref["key"]]
        else:
            notes.append(f"env {name}: {', '.join(vf)} is not supported by procnode; left unset")
    return env, notes


def command_line(container: JSON, env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded. Empty when the container relies on its image's entrypoint."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not container.get("command"):
        return []
    return [expand(str(a), env) for a in argv]


# --- names: the pod's hosts file -------------------------------------------------------------


def pod_names(pod: JSON, self_: bool) -> list[str]:
    """The names a pod answers to. Peers: only what cluster DNS serves (<host>.<subdomain>...); the
    pod itself: also its bare hostname, as the kubelet's /etc/hosts has it."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    host = spec.get("hostname") or meta.get("name", "")
    sub = spec.get("subdomain")
    ns = meta.get("namespace", "")
    names = []
    if sub:
        names += [f"{host}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}", f"{host}.{sub}.{ns}.svc", f"{host}.{sub}"]
    if self_:
        names.append(host)
    return names


def hosts_lines(pod: JSON, pod_ip: str, peers: Iterable[tuple[JSON, str]]) -> list[str]:
    """Lines of the pod's /etc/hosts: localhost, the pod itself, then its namespace's pods that
    have an address and a subdomain (what a headless Service publishes)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{pod_ip}\t{' '.join(pod_names(pod, self_=True))}")
    uid = (pod.get("metadata") or {}).get("uid")
    ns = (pod.get("metadata") or {}).get("namespace")
    for peer, ip in peers:
        pmeta = peer.get("metadata") or {}
        if pmeta.get("uid") == uid or pmeta.get("namespace") != ns or not ip:
            continue
        names = pod_names(peer, self_=False)
        if names:
            lines.append(f"{ip}\t{' '.join(names)}")
    return lines


# --- volumes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One mount in the pod's mount namespace: bind `source` (a host path) or a fresh tmpfs."""

    target: str
    kind: str  # "bind" | "tmpfs"
    source: str = ""
    read_only: bool = False
    size: str = ""  # tmpfs size (sizeLimit), e.g. "8Gi"; empty: the kernel default

    def to_json(self) -> JSON:
        return {
            "target": self.target,
            "kind": self.kind,
            "source": self.source,
            "read_only": self.read_only,
            "size": self.size,
        }


# Resolves a volume to a host directory, or None when it is not supported (the mount is skipped).
# The node does the I/O (a PVC's bound PV, per-pod dirs); this module only maps names to mounts.
VolumeSource = Callable[[JSON], str | None]


def mounts_for(container: JSON, volumes: Iterable[JSON], source_of: VolumeSource) -> tuple[list[Mount], list[str]]:
    by_name = {v["name"]: v for v in volumes}
    mounts: list[Mount] = []
    notes: list[str] = []
    for vm in container.get("volumeMounts") or []:
        vol = by_name.get(vm["name"])
        if vol is None:
            raise EnvError(f"volumeMount {vm['name']} names no volume of the pod")
        ro = bool(vm.get("readOnly"))
        empty = vol.get("emptyDir")
        if empty is not None and empty.get("medium") == "Memory":
            mounts.append(Mount(target=vm["mountPath"], kind="tmpfs", size=_tmpfs_size(empty.get("sizeLimit"))))
            continue
        source = source_of(vol)
        if source is None:
            kinds = ", ".join(k for k in vol if k != "name")
            notes.append(f"volume {vm['name']} ({kinds}) at {vm['mountPath']}: not supported by procnode; not mounted")
            continue
        if vm.get("subPath"):
            source = f"{source.rstrip('/')}/{vm['subPath']}"
        mounts.append(Mount(target=vm["mountPath"], kind="bind", source=source, read_only=ro))
    return mounts, notes


def _tmpfs_size(limit: Any) -> str:
    """A Kubernetes quantity as tmpfs's size= option (k/m/g suffixes, powers of 1024)."""
    if not limit:
        return ""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(limit))
    if not m:
        return ""
    n, unit = int(m.group(1)), m.group(2) or ""
    factor = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
              "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[unit]  # fmt: skip
    return str(n * factor)


# --- status ---------------------------------------------------------------------------------------


def exit_code(returncode: int) -> int:
    """subprocess' returncode (negative: killed by that signal) as a container exit code (128+n)."""
    return 128 - returncode if returncode < 0 else returncode


def terminated_reason(code: int) -> str:
    return "Completed" if code == 0 else "Error"


def running_status(pod: JSON, pod_ip: str, host_ip: str, started: Mapping[str, tuple[int, str]]) -> JSON:
    """Pod status once its containers run. started: container name -> (pid, startedAt)."""
    t = now()
    statuses = []
    for c in pod["spec"]["containers"]:
        pid, started_at = started[c["name"]]
        statuses.append(
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"procnode://{pid}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started_at}, "waiting": None, "terminated": None},
            }
        )
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": t}
        for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
    ]
    return {
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": (pod.get("status") or {}).get("startTime") or t,
            "conditions": conditions,
            "containerStatuses": statuses,
        }
    }


@dataclass(frozen=True)
class Outcome:
    """How one container ended."""

    exit_code: int
    reason: str  # Completed | Error | StartError | ...
    started_at: str
    finished_at: str
    pid: int = 0
    message: str = ""


def terminal_status(pod: JSON, outcomes: Mapping[str, Outcome], pod_ip: str, host_ip: str) -> JSON:
    """Succeeded when every container exited 0, else Failed (restartPolicy Never: no restarts here)."""
    t = now()
    statuses = []
    for c in pod["spec"]["containers"]:
        o = outcomes[c["name"]]
        term: JSON = {
            "exitCode": o.exit_code,
            "reason": o.reason,
            "startedAt": o.started_at,
            "finishedAt": o.finished_at,
            "containerID": f"procnode://{o.pid}",
        }
        if o.message:
            term["message"] = o.message
        statuses.append(
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"procnode://{o.pid}",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": term, "running": None, "waiting": None},
            }
        )
    ok = all(o.exit_code == 0 for o in outcomes.values())
    conditions = [
        {"type": kind, "status": "False", "reason": "PodCompleted", "lastTransitionTime": t}
        for kind in ("ContainersReady", "Ready")
    ]
    conditions.append({"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": t})
    status: JSON = {
        "phase": "Succeeded" if ok else "Failed",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "conditions": conditions,
        "containerStatuses": statuses,
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return {"status": status}


def failed_status(reason: str, message: str) -> JSON:
    """A pod the node could not run at all (or lost): Failed with a pod-level reason, no exit code."""
    return {"status": {"phase": "Failed", "reason": reason, "message": message}}
