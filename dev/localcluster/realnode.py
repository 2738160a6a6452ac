"""A real node next to the kwok nodes: containerd + runc + the kubelet, a pod bridge, cluster DNS.

One per machine (it owns a bridge, a firewall table and a cgroup subtree). What it adds to the host,
and `teardown` removes again:
- the bridge `phx0` (10.244.0.1/24) that pod network namespaces hang off. Pods get a route to the
  bridge's subnet and to the Service range only: there is no default route, no masquerade, and the
  nftables table `phalanx` drops anything forwarded off the bridge. Global ip_forward stays off.
- the `kubernetes` Service: pods dial 10.96.0.1:443 (KUBERNETES_SERVICE_HOST, as everywhere); one
  DNAT rule sends that to the apiserver on 127.0.0.1 (route_localnet on the bridge only), so the
  apiserver still listens on loopback alone.
- CoreDNS on 10.244.0.1:53, built with no `forward` plugin: it answers the cluster domain from the
  API and NXDOMAIN for every other name, so no lookup ever leaves the machine.
- containerd with its registry hosts pointed at 127.0.0.1:1: a missing image fails at once, locally,
  and images come only from `make images` (imported into the node's store).
- the kubelet's cgroups under /phalanx-node in every cgroup v1 hierarchy, and the kernel settings the
  kubelet changes at start (restored on teardown).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster import binaries, images, process
from localcluster import pki as pkimod
from localcluster.components import SERVICE_CIDR, kubeconfig
from localcluster.errors import ClusterError
from localcluster.kubeapi import ApiError, KubeApi
from localcluster.layout import Layout

Log = Callable[[str], None]

NODE_NAME = "phalanx-real-0"
BRIDGE = "phx0"
POD_SUBNET = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
KUBERNETES_SERVICE_IP = "10.96.0.1"
NFT_TABLE = "phalanx"
# The made-up addresses of kwok's nodes and pods (localcluster.nodes, components.POD_CIDR): with real
# pods next to them, something (the apiserver fetching logs, a scraper) may dial one. Blackhole
# routes make that fail here instead of leaving by the default route.
SIMULATED_RANGES = ("10.128.0.0/10", "10.64.0.0/14")
CGROUP_ROOT = "phalanx-node"
CLUSTER_DOMAIN = "cluster.local"
# Pods must ask for the real node: tolerate this taint and select this label.
TAINT_KEY = "phalanx.dev/real-node"
NODE_LABEL = "phalanx.dev/node"
NODE_LABEL_VALUE = "real"
PAUSE_IMAGE = "localhost/phalanx/pause:1"
# What `up` recorded, so a later `down` (or a stale-state clean) knows whose node this is.
OWNER_FILE = Path("/run/phalanx-realnode.json")
# Kernel settings the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables): restored on teardown.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")  # fmt: skip
PORT_NAMES = ("coredns-health", "kubelet-healthz", "kubelet")


@dataclass(frozen=True)
class Paths:
    """Where the node keeps its state: all under the cluster's dir, except the image store."""

    base: Path

    @classmethod
    def of(cls, layout: Layout) -> Paths:
        return cls(layout.dir / "realnode")

    @property
    def containerd_state(self) -> Path:
        return self.base / "containerd-state"

    @property
    def socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.base / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.base / "pod-logs"

    @property
    def cni(self) -> Path:
        return self.base / "cni"

    @property
    def config(self) -> Path:
        return self.base / "config"

    @staticmethod
    def containerd_root() -> Path:
        # Images and their unpacked layers outlive one cluster: importing the trainer images costs
        # minutes, so the store is a cache keyed by image ID (`teardown` empties everything else).
        return binaries.cache_dir() / "containerd"


def _sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()[:400]}")
    return proc


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def require_host() -> None:
    """Fail early, naming what is missing, before anything is changed on the host."""
    if os.geteuid() != 0:
        raise ClusterError("the real node needs root (it runs containerd and the kubelet)")
    missing = [t for t in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "nft", "ip") if not shutil.which(t)]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("/usr/lib/cni/bridge (containernetworking-plugins)")
    if missing:
        raise ClusterError(
            f"the real node needs {', '.join(missing)}: apt-get install the packages in dev/apt-packages.txt"
        )
    binaries.require(("kubelet", "coredns", "pause"))


# -- network ---------------------------------------------------------------------------------
def network_up(api_port: int) -> None:
    if _sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    conf = Path("/proc/sys/net/ipv4/conf") / BRIDGE
    # Lets the DNAT below reach the apiserver on 127.0.0.1 from this bridge (and from nothing else).
    (conf / "route_localnet").write_text("1")
    rules = f"""
table ip {NFT_TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{BRIDGE}" ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 dnat to 127.0.0.1:{api_port}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{BRIDGE}" oifname != "{BRIDGE}" drop
    oifname "{BRIDGE}" iifname != "{BRIDGE}" drop
  }}
}}
"""
    _sh("nft", "delete", "table", "ip", NFT_TABLE, check=False)
    _sh("nft", "-f", "-", input=rules)
    for cidr in SIMULATED_RANGES:
        _sh("ip", "route", "replace", "blackhole", cidr)


def network_down() -> None:
    for cidr in SIMULATED_RANGES:
        _sh("ip", "route", "delete", "blackhole", cidr, check=False)
    _sh("nft", "delete", "table", "ip", NFT_TABLE, check=False)
    _sh("ip", "link", "delete", BRIDGE, check=False)


def cni_config(paths: Paths) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "phalanx",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    # isGateway would turn on ip_forward for the whole host: the bridge already has
                    # its address, and the routes below name the gateway.
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                        # No default route: a pod can reach the bridge and Services, nothing else.
                        "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                        "dataDir": str(paths.cni / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        },
        indent=2,
    )


# -- configs ---------------------------------------------------------------------------------
def containerd_config(paths: Paths) -> str:
    hosts = paths.config / "certs.d"
    # Every registry resolves to a closed port on loopback: no name lookup, no traffic off the host.
    _write(
        hosts / "_default" / "hosts.toml",
        'server = "http://127.0.0.1:1"\n\n[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n',
    )
    return f"""version = 2
root = "{paths.containerd_root()}"
state = "{paths.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{paths.socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The CRI asks for oom_score_adj -998; without CAP_SYS_RESOURCE here runc then fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{paths.cni / "net.d"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"""


def corefile(health_port: int, kubeconfig_path: Path) -> str:
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {GATEWAY}
    health 127.0.0.1:{health_port}
    errors
    cache 5
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig_path}
        pods insecure
    }}
}}
.:53 {{
    bind {GATEWAY}
    errors
    # Outside the cluster domain there is nothing to ask: no upstream, by design.
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def kubelet_config(paths: Paths, pki: pkimod.Pki, healthz_port: int, kubelet_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this machine mounts cgroup v1; 1.36 refuses it unless told
        "cgroupDriver": "cgroupfs",  # containerd 1.6 lacks the RuntimeConfig call that reports it
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "makeIPTablesUtilChains": False,  # else it adds KUBE-FIREWALL DROP rules to the host
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "address": GATEWAY,
        "port": kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki.crt("kubelet-serving")),
        "tlsPrivateKeyFile": str(pki.key("kubelet-serving")),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_crt)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [GATEWAY],
        "resolvConf": str(_write(paths.config / "resolv.conf", "")),  # pods never see the host's resolver
        "podLogsDir": str(paths.pod_logs),
        "failSwapOn": False,
        "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        # Our images come from `make images` and cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "serializeImagePulls": False,
        "maxPods": 50,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


# -- cgroups, mounts, leftovers ----------------------------------------------------------------
def _cgroup_dirs() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return [d / CGROUP_ROOT for d in sorted(root.iterdir()) if d.is_dir() and (d / "cgroup.procs").exists()]


def _make_cgroups() -> None:
    for d in _cgroup_dirs():
        d.mkdir(exist_ok=True)
        if d.parent.name == "cpuset":  # a cpuset child starts empty and refuses tasks until filled
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((d.parent / f).read_text())


def _kill_cgroup_tasks() -> int:
    pids: set[int] = set()
    for d in _cgroup_dirs():
        if d.exists():
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in procs.read_text().split()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def _remove_cgroups() -> None:
    for d in _cgroup_dirs():
        if not d.exists():
            continue
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()


def _unmount_under(*prefixes: Path) -> None:
    roots = [str(p) for p in prefixes]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == r or mp.startswith(r + "/") for r in roots):
            points.append(mp)
    for mp in sorted(points, key=len, reverse=True):
        _sh("umount", "-l", mp, check=False)


def _read_sysctls() -> dict[str, str]:
    out = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            out[key] = (Path("/proc/sys") / key).read_text().strip()
    return out


def _restore_sysctls(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)


def _remove_container_log_links(paths: Paths) -> None:
    # The kubelet links /var/log/containers/*.log to our pod logs dir; that dir is a fixed path.
    links = Path("/var/log/containers")
    if links.is_dir():
        for link in links.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(os.readlink(link)).startswith(str(paths.pod_logs)):
                    link.unlink()


# -- images -----------------------------------------------------------------------------------
def ctr(paths: Paths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _sh("ctr", "--address", str(paths.socket), "--namespace", "k8s.io", *args, check=check)


def imported_id(paths: Paths, ref: str) -> str | None:
    out = ctr(paths, "images", "ls", f"name=={ref}", check=False).stdout.splitlines()[1:]
    for line in out:
        for label in line.split()[-1].split(","):
            if label.startswith(f"{images.INPUTS_LABEL}.id="):
                return label.split("=", 1)[1]
    return None


def load_image(paths: Paths, ref: str, log: Log) -> bool:
    """Import a built image into the node, unless the same image ID is already there."""
    image_id = images.image_id(ref)
    if image_id is None:
        return False
    if imported_id(paths, ref) == image_id:
        return True
    log(f"  loading image {ref} ({images.image_size(ref) / 1e9:.1f} GB) into the node: once per image, minutes")
    t0 = time.monotonic()
    tar = images.archive(ref)
    try:
        ctr(paths, "images", "import", str(tar))
        ctr(paths, "images", "label", ref, f"{images.INPUTS_LABEL}.id={image_id}")
    finally:
        tar.unlink(missing_ok=True)  # GBs; the node's store keeps the image, keyed by its ID
    log(f"  image {ref} loaded into the node (+{time.monotonic() - t0:.1f}s)")
    return True


def ensure_pause_image(log: Log) -> None:
    if images.image_id(PAUSE_IMAGE):
        return
    exe = binaries.binary("pause")
    container = _sh("buildah", "from", "scratch").stdout.strip()
    try:
        _sh("buildah", "copy", "--quiet", container, str(exe), "/pause")
        _sh("buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        _sh("buildah", "commit", "--quiet", container, PAUSE_IMAGE)
    finally:
        _sh("buildah", "rm", container, check=False)
    log(f"  built {PAUSE_IMAGE} from {exe.name}")


# -- the node ------------------------------------------------------------------------------------
class RealNode:
    """Starts the node's processes for one cluster, and records them in its state."""

    def __init__(self, layout: Layout, pki: pkimod.Pki, api: KubeApi, api_port: int, ports: dict[str, int],
                 state: dict[str, Any], die_with_parent: bool, log: Log) -> None:  # fmt: skip
        self.layout, self.pki, self.api, self.api_port, self.ports = layout, pki, api, api_port, ports
        self.state, self.die_with_parent, self.log = state, die_with_parent, log
        self.paths = Paths.of(layout)
        self.popen: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, preload: list[str], optional: Sequence[str] = ()) -> None:
        """preload: images to load (a missing one is reported); optional: loaded only if built."""
        t0 = time.monotonic()
        p = self.paths
        for d in (p.containerd_state, p.kubelet, p.pod_logs, p.cni / "net.d", p.config):
            d.mkdir(parents=True, exist_ok=True)
        _write(p.cni / "net.d" / "10-phalanx.conflist", cni_config(p))
        _make_cgroups()
        self._spawn(
            "containerd", ["containerd", "--config", str(_write(p.config / "containerd.toml", containerd_config(p)))]
        )
        self._wait(lambda: ctr(p, "version", check=False).returncode == 0, "containerd", 30)
        _forget_old_containers(p)
        ensure_pause_image(self.log)
        for ref in optional:
            load_image(p, ref, self.log)
        for ref in [PAUSE_IMAGE, *preload]:
            if not load_image(p, ref, self.log):
                self.log(f"  image {ref} is not built (make images): pods that use it will fail with ErrImagePull")
        self._grant_coredns()
        coredns_kubeconfig = kubeconfig(
            self.api_port, self.pki.ca_crt, self.pki.crt("coredns"), self.pki.key("coredns"), "coredns", embed=False
        )
        kc = _write(p.config / "coredns.kubeconfig", yaml.safe_dump(coredns_kubeconfig))
        corefile_path = _write(p.config / "Corefile", corefile(self.ports["coredns-health"], kc))
        self._spawn("coredns", [str(binaries.binary("coredns")), "-conf", str(corefile_path)])
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{self.ports['coredns-health']}/health"), "coredns", 30)
        node_kc = kubeconfig(
            self.api_port,
            self.pki.ca_crt,
            self.pki.crt("node"),
            self.pki.key("node"),
            f"system:node:{NODE_NAME}",
            embed=False,
        )
        cfg = kubelet_config(p, self.pki, self.ports["kubelet-healthz"], self.ports["kubelet"])
        argv = [
            str(binaries.binary("kubelet")),
            f"--config={_write(p.config / 'kubelet.yaml', yaml.safe_dump(cfg))}",
            f"--kubeconfig={_write(p.config / 'kubelet.kubeconfig', yaml.safe_dump(node_kc))}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={GATEWAY}",  # an address of this machine the apiserver can dial; loopback is refused
            f"--node-labels={NODE_LABEL}={NODE_LABEL_VALUE}",
            f"--root-dir={p.kubelet}",
            f"--cert-dir={p.kubelet / 'pki'}",
        ]
        self._spawn("kubelet", argv)
        self._wait(self._node_ready, f"node {NODE_NAME} Ready", 120)
        self.log(f"  real node {NODE_NAME} Ready (+{time.monotonic() - t0:.1f}s)")

    def _spawn(self, name: str, argv: list[str]) -> None:
        exe = shutil.which(argv[0]) or argv[0]
        argv = [exe, *argv[1:]]
        log = self.layout.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# {' '.join(argv)}\n")
        self.popen[name] = process.spawn(argv, log, die_with_parent=self.die_with_parent)
        self.state["real_node"]["processes"].append(
            {"name": name, "pid": self.popen[name].pid, "exe": exe, "log": str(log)}
        )
        self.layout.write_state(self.state)

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.popen.items():
                if proc.poll() is not None:
                    lines = [ln for ln in self.layout.log(name).read_text(errors="replace").splitlines() if ln.strip()]
                    last = lines[-1][:300] if lines else ""
                    where = self.layout.log(name)
                    raise ClusterError(f"{name} exited with code {proc.returncode}; see {where} (last line: {last})")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} not ready after {timeout:.0f}s; see the logs in {self.layout.logs}")
            time.sleep(0.25)

    def _node_ready(self) -> bool:
        try:
            node = self.api.get(f"/api/v1/nodes/{NODE_NAME}")
        except ApiError:
            return False
        return any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
        )

    def _grant_coredns(self) -> None:
        """CoreDNS reads Services, EndpointSlices, Pods and Namespaces: the rules of kubeadm's system:coredns."""
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "phalanx:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "phalanx:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "phalanx:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "phalanx-coredns"}],
        }
        for path, body in (("clusterroles", role), ("clusterrolebindings", binding)):
            try:
                self.api.post(f"/apis/rbac.authorization.k8s.io/v1/{path}", body)
            except ApiError as e:
                if e.status != 409:
                    raise ClusterError(f"creating {body['kind']} phalanx:coredns failed: {e}") from e


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _forget_old_containers(paths: Paths) -> None:
    """The image store is kept between clusters; containers of an earlier one are not."""
    for kind in ("tasks", "containers"):
        ids = ctr(paths, kind, "ls", "-q", check=False).stdout.split()
        for cid in ids:
            if kind == "tasks":
                ctr(paths, "tasks", "kill", "-s", "SIGKILL", cid, check=False)
                ctr(paths, "tasks", "delete", "-f", cid, check=False)
            else:
                ctr(paths, "containers", "delete", cid, check=False)


def prepare(layout: Layout, api_port: int, state: dict[str, Any]) -> None:
    """Claim the machine's one real node and bring up its network; recorded first, so an abort cleans it."""
    claim_host(layout)
    state["real_node"] = {"sysctls": _read_sysctls(), "processes": []}
    layout.write_state(state)
    network_up(api_port)


def claim_host(layout: Layout) -> None:
    """One real node per machine: refuse when another live cluster owns it, clean up a dead one's."""
    if OWNER_FILE.exists():
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads(OWNER_FILE.read_text())
            other = Layout(Path(owner["dir"]))
            if other.dir != layout.dir:
                procs = (other.read_state() or {}).get("real_node", {}).get("processes", [])
                if any(process.runs(pr["pid"], pr["exe"]) for pr in procs):
                    raise ClusterError(
                        f"the real node of the cluster in {other.dir} still runs (one per machine); "
                        f"run `python -m localcluster down --dir {other.dir}` first"
                    )
            teardown(other, owner.get("sysctls", {}), log=lambda _: None)
    OWNER_FILE.write_text(json.dumps({"dir": str(layout.dir), "sysctls": _read_sysctls()}))


def teardown(layout: Layout, sysctls: dict[str, str], log: Log, processes: list[dict[str, Any]] | None = None) -> None:
    """Remove everything the node added: processes, containers, mounts, cgroups, bridge, firewall table."""
    paths = Paths.of(layout)
    for proc in reversed(processes or []):
        if proc["name"] != "containerd":
            process.stop(proc["pid"], proc["exe"])
    if paths.socket.exists():
        _forget_old_containers(paths)
    killed = _kill_cgroup_tasks()
    for proc in processes or []:
        if proc["name"] == "containerd":
            process.stop(proc["pid"], proc["exe"])
    for pid in process.cmdline_mentions(str(paths.containerd_state)):  # shims of this containerd
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _unmount_under(paths.base, Paths.containerd_root())
    _remove_cgroups()
    network_down()
    _remove_container_log_links(paths)
    _restore_sysctls(sysctls)
    shutil.rmtree(paths.base, ignore_errors=True)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(OWNER_FILE.read_text()).get("dir") == str(layout.dir):
            OWNER_FILE.unlink()
    what = f"bridge {BRIDGE}, nft table {NFT_TABLE}, cgroups /{CGROUP_ROOT}"
    log(f"  real node removed ({what}; {killed} container processes ended)")
