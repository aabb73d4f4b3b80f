"""A real node for the local control plane: containerd, a kubelet, kube-proxy and CoreDNS.

Pods that tolerate :data:`TAINT` (and select :data:`LABEL`) run here as real containers: a
private containerd (own root, state and socket; runc; the CNI bridge :data:`BRIDGE` on
:data:`POD_CIDR`), a kubelet v1.35 built from the control plane's own module and registered
as node ``localhost``, kube-proxy in iptables mode, and CoreDNS serving ``cluster.local`` on
the bridge's gateway address. Every other pod stays on kwok's fake node.

A node changes host-wide state: processes, mounts, a bridge, iptables chains, cgroups under
:data:`CGROUP_ROOT`, a few sysctls and paths containerd 1.6 and the kubelet hard-code. So one
node runs per machine (:data:`LOCK` says whose), everything changed is recorded in the node's
directory as it happens, and :meth:`Node.down` undoes all of it, in an order that also works
after a crash halfway through :meth:`Node.up`. :func:`leftovers` lists what would still be
there (the tests call it after ``down``).

Traffic stays on this machine: pods reach each other and the host's bridge address, the API
server through one DNAT rule for the ``kubernetes`` Service, and nothing else (guards reject
traffic from pods leaving the pod network, and traffic to Service or kwok addresses that no
rule translated).

    python -m runbook_lab.node up|down|status DIR --controlplane DIR --bin NODE_BIN
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runbook_lab import images
from runbook_lab.controlplane import KWOK_CIDR, SERVICE_CIDR, ControlPlane, alive, terminate, wait_while_alive

NODE_NAME = "localhost"  # the API server reaches a kubelet by its hostname first: 127.0.0.1
BRIDGE = "rbo0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"  # the bridge's address: the node IP, CoreDNS, the host's services
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR
CLUSTER_DOMAIN = "cluster.local"
LABEL = ("node.runbook-operator.dev/real", "true")
TAINT = "node.runbook-operator.dev/real=true:NoSchedule"
CGROUP_ROOT = "runbook-node"  # the kubelet's cgroupRoot: every pod's cgroup lives below it
CNI_BIN = Path("/usr/lib/cni")
CNI_NETWORK = "runbook-node"
PAUSE_IMAGE = "runbook-operator.local/pause:3.10"
LOCK = Path("/run/runbook-operator-node.json")  # host-wide: which directory's node runs
KUBELET_PORT, KUBELET_HEALTHZ_PORT = 10250, 10248
KUBE_PROXY_HEALTHZ, KUBE_PROXY_METRICS = "127.0.0.1:10256", "127.0.0.1:10249"
COREDNS_HEALTH = "127.0.0.1:10254"
# sysctls the kubelet and the bridge plugin set: saved before, restored after
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward")
# paths containerd 1.6, the CNI library and the kubelet use whatever they are told
HARDCODED = (Path("/run/containerd/s"), Path("/var/lib/cni/results"), Path("/var/log/containers"))
# iptables chains the kubelet makes in every table it touches, IPv4 and IPv6
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
# kube-proxy's canaries outlive `kube-proxy --cleanup` when it stopped before its first full sync
PROXY_CANARIES = ("KUBE-PROXY-CANARY",)
GUARD, DNAT = "RBO-GUARD", "RBO-DNAT"  # ours: filter (FORWARD, OUTPUT) and nat (PREROUTING)
PROCESSES = ("containerd", "kubelet", "kube-proxy", "coredns")
CONTAINERD, CTR = Path("/usr/bin/containerd"), Path("/usr/bin/ctr")
SHIM = "containerd-shim-runc-v2"


class NodeError(RuntimeError):
    pass


class Unavailable(NodeError):
    """This machine cannot run a real node (the reason says why); kwok's fake node still works."""


@dataclass
class NodeState:
    root: str
    bin: str = ""  # the node's binaries (tools/node/build.sh), so `down` needs only the directory
    pids: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    # what existed in each HARDCODED directory before (None: the directory did not exist)
    before: dict[str, list[str] | None] = field(default_factory=dict)
    started: float = 0.0


def machine_reason() -> str | None:
    """Why this machine cannot run a real node (binaries aside), or None."""
    if os.environ.get("RUNBOOK_LAB_NODE") == "kwok":
        return "RUNBOOK_LAB_NODE=kwok"
    if sys.platform != "linux":
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (containerd, mounts, iptables)"
    for need in (CONTAINERD, CTR, Path("/usr/sbin/runc"), CNI_BIN / "bridge", CNI_BIN / "host-local"):
        if not need.exists():
            return f"{need} is missing (tools/system-packages.sh installs docker.io and containernetworking-plugins)"
    for tool in ("iptables", "ip6tables", "ip", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


def unavailable_reason(bin_dir: Path) -> str | None:
    """Why a real node cannot start here with these binaries, or None."""
    if reason := machine_reason():
        return reason
    for binary in ("kubelet", "kube-proxy", "coredns", "pause"):
        if not (bin_dir / binary).exists():
            return f"{bin_dir / binary} is missing: run tools/node/build.sh"
    return None


def owner() -> dict[str, Any] | None:
    """The node that runs on this machine: its directory and kubelet pid, if it is alive."""
    try:
        data: dict[str, Any] = json.loads(LOCK.read_text())
    except (OSError, ValueError):
        return None
    state_file = Path(data.get("root", "")) / "state.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        pids = json.loads(state_file.read_text())["pids"]
        if any(alive(int(pid)) for pid in pids.values()):
            return data
    return None


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """One start or stop at a time on this machine."""
    with open(str(LOCK) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class Node:
    def __init__(self, root: Path, plane: ControlPlane, bin_dir: Path | None = None) -> None:
        """``bin_dir``: needed to start; a running (or crashed) node's directory remembers its own."""
        self.root, self.plane = root.resolve(), plane
        self.state_file = self.root / "state.json"
        self.state = self._load()
        remembered = Path(self.state.bin) if self.state and self.state.bin else None
        self.bin = (bin_dir or remembered or Path("/nonexistent")).resolve()

    # -- paths ---------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    def kubeconfig(self, identity: str) -> Path:
        return self.root / f"{identity}.kubeconfig"

    # -- lifecycle -----------------------------------------------------------------------------

    def up(self, timeout: float = 120.0) -> None:
        """Start the node (or keep the one this directory runs); raise Unavailable or NodeError."""
        reason = unavailable_reason(self.bin)
        if reason:
            raise Unavailable(reason)
        with _host_lock():
            other = owner()
            if other is not None and Path(other["root"]) == self.root and self.running():
                return
            if other is not None:
                raise NodeError(
                    f"a real node already runs on this machine from {other['root']} (one per machine: it "
                    "changes host-wide state); stop it first with `make cluster-down` in its checkout "
                    f"or `python -m runbook_lab.node down {other['root']}`"
                )
            self._down()  # whatever an earlier crash left in this directory
            try:
                self._up(timeout)
            except BaseException:
                self._down()
                raise

    def down(self) -> None:
        with _host_lock():
            self._down()

    def running(self) -> bool:
        state = self.state
        return bool(state) and all(self._owns(name) for name in PROCESSES) and self._ready()

    # -- start ---------------------------------------------------------------------------------

    def _up(self, timeout: float) -> None:
        plane = self.plane
        assert plane.state, "start the control plane first"
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "cni/net.d", "cni/ipam", "pod-logs", "kubelet", "containerd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.state = NodeState(root=str(self.root), bin=str(self.bin), started=time.time())
        self.state.sysctls = {key: _sysctl(key) for key in SYSCTLS}
        self.state.before = {str(p): sorted(os.listdir(p)) if p.is_dir() else None for p in HARDCODED}
        self._save()
        LOCK.write_text(json.dumps({"root": str(self.root), "pid": os.getpid()}))

        self._guards(plane.state.api_port)
        self._bridge()
        for name, path in self._cgroup_roots():
            path.mkdir(exist_ok=True)
            if name == "cpuset":  # a v1 cpuset cgroup starts empty: a child could hold no task
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((path.parent / knob).read_text())
        self._write_kubeconfigs()
        self._start_containerd(timeout)
        self.import_image(images.pause_archive(self.bin / "pause"))
        self._write_cni()
        self._start_kubelet()
        self._wait(self._ready, timeout, "the node to be Ready")
        self._start_kube_proxy()
        self._start_coredns()
        self._wait(self._dns_ready, timeout, "CoreDNS to answer")

    def _guards(self, api_port: int) -> None:
        """Before kube-proxy: pods reach only the pod network, the host and (DNAT) the API server."""
        for table, chain, parents in (("filter", GUARD, ("FORWARD", "OUTPUT")), ("nat", DNAT, ("PREROUTING",))):
            _iptables("-t", table, "-N", chain)
            for parent in parents:
                _iptables("-t", table, "-I", parent, "1", "-j", chain)
        # leaving the pod network through the host is refused (this machine talks only to itself)
        _iptables("-A", GUARD, "-s", POD_CIDR, "!", "-d", POD_CIDR, "-j", "REJECT")
        # a Service (or a kwok pod) address no rule translated would leave by the default route
        for cidr in (SERVICE_CIDR, KWOK_CIDR):
            _iptables("-A", GUARD, "-d", cidr, "-j", "REJECT")
        # the `kubernetes` Service: the API server advertises 127.0.0.1, which an Endpoint may not be
        _iptables("-t", "nat", "-A", DNAT, "-i", BRIDGE, "-d", KUBERNETES_SERVICE_IP, "-p", "tcp", "--dport", "443",
                  "-j", "DNAT", "--to-destination", f"127.0.0.1:{api_port}")  # fmt: skip

    def _bridge(self) -> None:
        """The bridge the CNI plugin uses, made first so the kubelet can name its address as the node IP."""
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _write_sysctl(f"net/ipv4/conf/{BRIDGE}/route_localnet", "1")  # the DNAT to 127.0.0.1

    def _write_kubeconfigs(self) -> None:
        plane = self.plane
        assert plane.state
        ca = plane.root / "pki" / "apiserver.crt"
        for identity, token in plane.state.node_tokens.items():
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "local", "cluster": {"server": plane.state.server, "certificate-authority": str(ca)}}
                ],
                "users": [{"name": identity, "user": {"token": token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": identity}}],
                "current-context": "local",
            }
            path = self.kubeconfig(identity)
            path.write_text(json.dumps(config, indent=2))
            path.chmod(0o600)

    def _start_containerd(self, timeout: float) -> None:
        root = self.root / "containerd"
        config = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # the VM's capability bounding set lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused
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
        Root = "{root / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.root / "cni" / "net.d"}"
"""
        (root / "config.toml").write_text(config)
        self._spawn("containerd", CONTAINERD, "--config", str(root / "config.toml"), "--log-level", "warn")
        self._wait(lambda: self._ctr("version", check=False).returncode == 0, timeout, "containerd to answer")

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(str(CTR), "--address", str(self.socket), "--namespace", "k8s.io", *args, check=check)

    def import_image(self, archive: Path) -> None:
        """Make an image archive (OCI or `docker save`) available to the node's pods (imagePullPolicy: Never)."""
        self._ctr("images", "import", "--no-unpack", str(archive))

    def expose(self, service_ip: str, port: int, host: str, host_port: int) -> None:
        """Pods reach a host process on a loopback address through a Service's IP: one DNAT rule on the
        bridge (as for the API server), so the process itself never listens beyond loopback."""
        rule = ("-i", BRIDGE, "-d", service_ip, "-p", "tcp", "--dport", str(port),
                "-j", "DNAT", "--to-destination", f"{host}:{host_port}")  # fmt: skip
        if _run("iptables", "-w", "5", "-t", "nat", "-C", DNAT, *rule, check=False).returncode != 0:
            _iptables("-t", "nat", "-A", DNAT, *rule)

    def _write_cni(self) -> None:
        network = {
            "cniVersion": "0.4.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": True,  # pods route everything through the host (the guards decide)
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                        "dataDir": str(self.root / "cni" / "ipam"),
                    },
                }
            ],
        }
        (self.root / "cni" / "net.d" / "10-runbook-node.conflist").write_text(json.dumps(network, indent=2))

    def _start_kubelet(self) -> None:
        pki = self.plane.root / "pki"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine has the v1 hierarchy; 1.35 refuses it unless told
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "address": "127.0.0.1",
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            # only the API server (its client certificate) may use the kubelet's API
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki / "kubelet-ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": [GATEWAY],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",  # pods get the cluster's DNS only, none of the host's
            "podLogsDir": str(self.pod_logs),
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 40,
            "serializeImagePulls": False,
            "registerWithTaints": [_taint(TAINT)],
        }
        path = self.root / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        self._spawn(
            "kubelet",
            self.bin / "kubelet",
            f"--config={path}",
            f"--kubeconfig={self.kubeconfig('kubelet')}",
            f"--root-dir={self.root / 'kubelet'}",
            f"--cert-dir={self.root / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={GATEWAY}",
            f"--node-labels={LABEL[0]}={LABEL[1]}",
            "--v=1",
        )

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig("kube-proxy"))},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": KUBE_PROXY_HEALTHZ,
            "metricsBindAddress": KUBE_PROXY_METRICS,
            "nodePortAddresses": [f"{GATEWAY}/32"],
            # no sysctl changes: conntrack sizes and timeouts left as the host has them
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        self._spawn("kube-proxy", self.bin / "kube-proxy", f"--config={path}", "--v=0")

    def _start_coredns(self) -> None:
        self._coredns_rbac()
        corefile = f""".:53 {{
    bind {GATEWAY}
    errors
    health {COREDNS_HEALTH}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig("coredns")} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""
        (self.root / "Corefile").write_text(corefile)
        self._spawn("coredns", self.bin / "coredns", "-conf", str(self.root / "Corefile"))

    def _coredns_rbac(self) -> None:
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "runbook-lab:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces", "endpoints"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }  # fmt: skip
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "runbook-lab:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "runbook-lab:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}],
        }
        for path, body in (("clusterroles", role), ("clusterrolebindings", binding)):
            code, _ = self.plane.request("POST", f"/apis/rbac.authorization.k8s.io/v1/{path}", body)
            if code not in (201, 409):
                raise NodeError(f"creating {body['kind']} runbook-lab:coredns answered HTTP {code}")

    # -- stop ----------------------------------------------------------------------------------

    def _down(self) -> None:
        """Undo everything a node of this directory did, even a half-started one; idempotent.

        Every step is tried even when an earlier one failed (a teardown that stops halfway leaves
        more behind); what failed is raised together at the end, and a later `down` tries again.
        """
        state = self.state or self._load()
        errors: list[str] = []

        def attempt(what: str, step: Any, *args: Any) -> None:
            try:
                step(*args)
            except Exception as err:
                errors.append(f"{what}: {err}")

        def stop_processes() -> None:
            if state is not None:
                for name in ("coredns", "kube-proxy", "kubelet"):
                    if self._owns(name):
                        terminate(state.pids[name])

        def stop_containerd() -> None:
            if state is not None and self._owns("containerd"):
                terminate(state.pids["containerd"])

        attempt("the Node object", self._delete_node_object)
        attempt("stopping the node's processes", stop_processes)
        attempt("killing the pods' processes", self._kill_pods)
        attempt("killing the shims", self._kill_shims)
        attempt("stopping containerd", stop_containerd)
        attempt("unmounting", self._unmount)
        attempt("removing cgroups", self._remove_cgroups)
        attempt("iptables", self._remove_rules)
        attempt("the bridge", self._remove_bridge)
        if state is not None:
            attempt("hard-coded paths", self._restore_hardcoded, state)
            for key, value in state.sysctls.items():
                attempt(f"sysctl {key}", _write_sysctl, key, value)
        if errors:
            raise NodeError("the node was not fully torn down (run `down` again): " + "; ".join(errors))
        with contextlib.suppress(OSError, ValueError):
            if json.loads(LOCK.read_text()).get("root") == str(self.root):
                LOCK.unlink()
        shutil.rmtree(self.root, ignore_errors=True)
        self.state = None

    def _delete_node_object(self) -> None:
        with contextlib.suppress(urllib.error.URLError, OSError):
            if self.plane.state and self.plane.ready():
                self.plane.request("DELETE", f"/api/v1/nodes/{NODE_NAME}")

    def _remove_rules(self) -> None:
        if (self.bin / "kube-proxy").exists():
            _run(str(self.bin / "kube-proxy"), "--cleanup", "--v=0", check=False)
        _remove_chains((*KUBELET_CHAINS, *PROXY_CANARIES))
        _remove_chains((GUARD, DNAT))

    def _remove_bridge(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            for veth in os.listdir(f"/sys/class/net/{BRIDGE}/brif"):
                _run("ip", "link", "del", veth, check=False)
            _run("ip", "link", "del", BRIDGE)

    def _kill_pods(self) -> None:
        """Every process in the node's pod cgroups (containers outlive a stopped kubelet)."""
        for _ in range(150):  # 15 s: a process in uninterruptible sleep dies when its I/O returns
            pids = {pid for _, root in self._cgroup_roots() for pid in _cgroup_pids(root)}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise NodeError(f"processes in /{CGROUP_ROOT} survived SIGKILL: {sorted(pids)}")

    def _kill_shims(self) -> None:
        """The shims of this node's containerd: they outlive it, holding sockets and mounts."""
        for pid in _shims(self.socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _shims(self.socket) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _unmount(self) -> None:
        """Mounts under the node's directory, deepest first (kubelet root, volumes, shm, netns, overlay)."""
        for _ in range(3):
            mounts = _mounts_under(self.root)
            if not mounts:
                return
            for target in mounts:
                if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", target], capture_output=True)
        left = _mounts_under(self.root)
        if left:
            raise NodeError(f"still mounted after umount: {left}")

    def _cgroup_roots(self) -> list[tuple[str, Path]]:
        return [(h.name, h / CGROUP_ROOT) for h in sorted(Path("/sys/fs/cgroup").iterdir()) if h.is_dir()]

    def _remove_cgroups(self) -> None:
        for _, root in self._cgroup_roots():
            if not root.is_dir():
                continue
            for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    def _restore_hardcoded(self, state: NodeState) -> None:
        """Remove what this node added to the directories containerd and the kubelet hard-code."""
        for directory in HARDCODED:
            before = state.before.get(str(directory), None)
            if not directory.is_dir():
                continue
            keep = set(before or ())
            for entry in os.listdir(directory):
                if entry in keep:
                    continue
                path = directory / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
            if before is None:
                with contextlib.suppress(OSError):
                    directory.rmdir()
                    if directory.parent.name == "cni" and not any(directory.parent.iterdir()):
                        directory.parent.rmdir()  # /var/lib/cni, made for results/

    # -- helpers -------------------------------------------------------------------------------

    def _load(self) -> NodeState | None:
        try:
            return NodeState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _save(self) -> None:
        assert self.state
        self.state_file.write_text(json.dumps(asdict(self.state)))

    def _owns(self, name: str) -> bool:
        state = self.state
        pid = state.pids.get(name, 0) if state else 0
        binary = CONTAINERD if name == "containerd" else self.bin / name
        try:
            return os.readlink(f"/proc/{pid}/exe") == str(binary) and alive(pid)
        except OSError:
            return False

    def _spawn(self, name: str, binary: Path, *args: str) -> None:
        assert self.state
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [str(binary), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.state.pids[name] = proc.pid
        self._save()

    def _ready(self) -> bool:
        code, node = self.plane.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        if code != 200:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _dns_ready(self) -> bool:
        host, port = COREDNS_HEALTH.split(":")
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=1)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def _wait(self, probe: Any, timeout: float, what: str) -> None:
        wait_while_alive(probe, timeout, what, self.state.pids if self.state else {}, self.root / "logs", NodeError)


# -- host-wide helpers ---------------------------------------------------------------------------


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise NodeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def _iptables(*args: str, v6: bool = False) -> None:
    _run("ip6tables" if v6 else "iptables", "-w", "5", *args)


def _iptables_has_chain(table: str, chain: str, v6: bool = False) -> bool:
    done = _run("ip6tables" if v6 else "iptables", "-w", "5", "-t", table, "-S", chain, check=False)
    return done.returncode == 0


def _remove_chains(chains: tuple[str, ...]) -> None:
    """Delete every rule that jumps to these chains, then the chains, in every table, IPv4 and IPv6."""
    for v6 in (False, True):
        tool = "ip6tables" if v6 else "iptables"
        for table in ("filter", "nat", "mangle"):
            listing = _run(tool, "-w", "5", "-t", table, "-S", check=False).stdout.splitlines()
            for line in listing:
                words = shlex.split(line)
                jump = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
                if words[:1] == ["-A"] and jump in chains and words[1] not in chains:
                    _run(tool, "-w", "5", "-t", table, "-D", *words[1:], check=False)
            for chain in chains:
                if _iptables_has_chain(table, chain, v6):
                    _run(tool, "-w", "5", "-t", table, "-F", chain, check=False)
                    _run(tool, "-w", "5", "-t", table, "-X", chain, check=False)


def placement() -> dict[str, Any]:
    """The part of a pod spec that puts it on the real node (its label and toleration)."""
    key, value = LABEL
    return {
        "nodeSelector": {key: value},
        "tolerations": [{"key": TAINT.split("=", 1)[0], "operator": "Exists", "effect": "NoSchedule"}],
    }


def _taint(text: str) -> dict[str, str]:
    key_value, effect = text.rsplit(":", 1)
    key, value = key_value.split("=", 1)
    return {"key": key, "value": value, "effect": effect}


def _sysctl(key: str) -> str:
    return (Path("/proc/sys") / key).read_text().strip()


def _write_sysctl(key: str, value: str) -> None:
    (Path("/proc/sys") / key).write_text(value)


def _cgroup_pids(root: Path) -> set[int]:
    """Pids in ``root`` and below; cgroups that vanish meanwhile (the kubelet or runc removing them) are skipped."""
    pids: set[int] = set()
    for directory, _, files in os.walk(root):  # os.walk ignores directories that disappear under it
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(line) for line in (Path(directory) / "cgroup.procs").read_text().split()}
    return pids


def _shims(socket: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(SHIM.encode()) and str(socket).encode() in argv and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root)
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            targets.append(target)
    return sorted(set(targets), key=lambda t: (-t.count("/"), t))


def leftovers(root: Path, bin_dir: Path) -> list[str]:
    """What a node run from ``root`` would have left on this machine (empty after a clean ``down``)."""
    found = []
    binaries = {str(bin_dir / n) for n in ("kubelet", "kube-proxy", "coredns")}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            exe = os.readlink(entry / "exe")
            argv = (entry / "cmdline").read_bytes()
            if exe in binaries or (str(root).encode() in argv and alive(int(entry.name))):
                command = argv.replace(b"\0", b" ").decode(errors="replace")[:200]
                found.append(f"process {entry.name}: {command}")
    found += [f"mount {target}" for target in _mounts_under(root)]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"link {BRIDGE}")
    for v6 in (False, True):
        for table in ("filter", "nat", "mangle"):
            for chain in (*KUBELET_CHAINS, *PROXY_CANARIES, GUARD, DNAT, "KUBE-SERVICES", "KUBE-POSTROUTING"):
                if _iptables_has_chain(table, chain, v6):
                    found.append(f"ip{'6' if v6 else ''}tables -t {table} chain {chain}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / CGROUP_ROOT).exists():
            found.append(f"cgroup {hierarchy / CGROUP_ROOT}")
    if owner() is not None and owner().get("root") == str(root):  # type: ignore[union-attr]
        found.append(f"lock {LOCK}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runbook_lab.node", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="exit 0 if this machine can run a real node, else print why and exit 1")
    for name in ("up", "down", "status"):
        each = sub.add_parser(name)
        each.add_argument("dir", type=Path)
        each.add_argument("--controlplane", type=Path, required=True, help="the control plane's directory")
        if name == "up":
            each.add_argument("--bin", type=Path, required=True, help="the node's binaries: $(tools/node/build.sh)")
    args = parser.parse_args(argv)
    if args.command == "check":
        reason = machine_reason()
        if reason:
            print(reason)
        return 1 if reason else 0
    node = Node(args.dir, ControlPlane(args.controlplane, Path("/nonexistent")), getattr(args, "bin", None))
    if args.command == "up":
        started = time.monotonic()
        try:
            node.up()
        except Unavailable as err:
            print(f"real node: not started ({err}); pods run on kwok's fake node only")
            return 0
        except NodeError as err:
            print(f"real node: {err}", file=sys.stderr)
            return 1
        print(f"real node {NODE_NAME} Ready in {time.monotonic() - started:.1f}s (for pods that tolerate {TAINT})")
    elif args.command == "down":
        node.down()
        print("real node stopped")
    else:
        running = node.running()
        print("running" if running else "stopped")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
