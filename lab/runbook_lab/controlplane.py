"""A real Kubernetes control plane as plain processes on loopback (envtest's way).

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (one fake
node, so Deployments get Running pods) are started from binaries built by
``tools/controlplane/build.sh``. State (pids, ports, kubeconfig, logs, data)
lives in one directory; ``down`` stops exactly the processes ``up`` started.

    python -m runbook_lab.controlplane up|down|status DIR --bin BIN_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ADMIN_USER = "admin"
NODE_NAME = "kwok-node-0"
SERVICE_CIDR = "10.0.0.0/24"
KWOK_CIDR = "10.77.0.0/16"  # kwok's fake pod IPs: apart from the Services' and a real node's pods
# the identities a real node's processes (runbook_lab.node) authenticate as: user, groups
NODE_IDENTITIES = {
    "kubelet": ("system:node:localhost", "system:nodes"),  # the Node authorizer's naming
    "kube-proxy": ("system:kube-proxy", ""),  # bound to system:node-proxier by default
    "coredns": ("system:coredns", ""),  # bound by runbook_lab.node to a read-only role
}
BIND_ATTEMPTS = 3
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ControlPlaneError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class State:
    api_port: int
    token: str
    pids: dict[str, int] = field(default_factory=dict)
    node_tokens: dict[str, str] = field(default_factory=dict)  # NODE_IDENTITIES' bearer tokens
    args: dict[str, list[str]] = field(default_factory=dict)  # each component's command line, to restart it

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"


class ControlPlane:
    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin = root.resolve(), bin_dir.resolve()
        self.kubeconfig = self.root / "kubeconfig"
        self._state_file = self.root / "state.json"
        self.state: State | None = self._load()

    # -- lifecycle ---------------------------------------------------------
    def up(self, timeout: float = 120.0) -> Path:
        """Start everything, or reuse what already runs; return the kubeconfig path."""
        if self.state and self.running():
            return self.kubeconfig
        tries = BIND_ATTEMPTS
        while True:
            try:
                self._start_fresh(timeout)
                return self.kubeconfig
            except ControlPlaneError as err:
                # a port free_port() picked was taken before the component bound it (by an outgoing
                # connection on a busy machine, say): start again, on other ports
                tries -= 1
                if tries == 0 or "address already in use" not in str(err):
                    raise

    def _start_fresh(self, timeout: float) -> None:
        self.down()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        tokens = {name: secrets.token_hex(16) for name in NODE_IDENTITIES}
        self.state = State(api_port=free_port(), token=secrets.token_hex(16), node_tokens=tokens)
        try:
            self._start_all(timeout)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop the processes this directory started (by pid, checked by binary path)."""
        state = self.state or self._load()
        if state:
            for name in reversed(COMPONENTS):
                pid = state.pids.get(name)
                if pid and self._owns(pid, name):
                    terminate(pid)
        for leftover in ("etcd-data", "state.json", "kubeconfig"):
            path = self.root / leftover
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        self.state = None

    def running(self) -> bool:
        state = self.state
        if not state or not all(self._owns(state.pids.get(n, 0), n) for n in COMPONENTS):
            return False
        return self.ready()

    # -- one component (restart tests: the API server or etcd going away and coming back) --
    def stop_component(self, name: str, kill: bool = False) -> None:
        """Stop one component by its pid: TERM (a graceful stop), or KILL (a crash)."""
        assert self.state
        pid = self.state.pids.get(name, 0)
        if not self._owns(pid, name):
            raise ControlPlaneError(f"{name} is not running (pid {pid})")
        if kill:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        else:
            terminate(pid)

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped component again with its first command line: same ports, same data."""
        assert self.state
        if self._owns(self.state.pids.get(name, 0), name):
            raise ControlPlaneError(f"{name} is already running")
        self._spawn(name, *self.state.args[name])
        if name == "kube-apiserver":
            self._wait(self.ready, timeout, "kube-apiserver /readyz after a restart")

    # -- internals -----------------------------------------------------------
    def _load(self) -> State | None:
        try:
            return State(**json.loads(self._state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _save(self) -> None:
        assert self.state
        self._state_file.write_text(json.dumps(asdict(self.state)))

    def _owns(self, pid: int, name: str) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/exe") == str(self.bin / name) and alive(pid)
        except OSError:
            return False

    def _spawn(self, name: str, *args: str) -> None:
        assert self.state
        binary = self.bin / name
        if not binary.exists():
            raise ControlPlaneError(f"{binary} is missing: run tools/controlplane/build.sh")
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [str(binary), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.state.pids[name] = proc.pid
        self.state.args[name] = list(args)
        self._save()

    def _start_all(self, timeout: float) -> None:
        assert self.state
        root, st = self.root, self.state
        pki = root / "pki"
        pki.mkdir(exist_ok=True)
        if not (pki / "sa.key").exists():
            subprocess.run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"], check=True, capture_output=True)
            subprocess.run(
                ["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")],
                check=True,
                capture_output=True,
            )
        lines = [f'{st.token},{ADMIN_USER},{ADMIN_USER},"system:masters"']
        for name, (user, groups) in NODE_IDENTITIES.items():
            lines.append(f"{st.node_tokens[name]},{user},{user}" + (f',"{groups}"' if groups else ""))
        (pki / "tokens.csv").write_text("\n".join(lines) + "\n")
        (pki / "tokens.csv").chmod(0o600)
        _kubelet_client_pki(pki)
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            f"--data-dir={root / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={st.api_port}",
            f"--cert-dir={pki}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # what the API server shows a real node's kubelet (logs, exec); the kubelet trusts only this CA
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            "--allow-privileged=true",
        )
        self._wait(self.ready, timeout, "kube-apiserver /readyz")
        self._write_kubeconfig()
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={kubeconfig}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'apiserver.crt'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--controllers=*,-nodeipam",
        )
        self._spawn(
            "kube-scheduler",
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        )
        self._spawn(
            "kwok",
            f"--kubeconfig={kubeconfig}",
            # only its own fake node: a real node (runbook_lab.node) is the kubelet's
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={KWOK_CIDR}",
            # renew the node Lease like a kubelet, or the node lifecycle controller marks the
            # node NotReady after ~50 s and every pod on it Ready=False for good
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{free_port()}",
        )
        self._create_node()
        self._wait(self._default_service_account, timeout, "the default ServiceAccount")

    def _write_kubeconfig(self) -> None:
        assert self.state
        ca = self.root / "pki" / "apiserver.crt"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.state.server, "certificate-authority": str(ca)}}],
            "users": [{"name": ADMIN_USER, "user": {"token": self.state.token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": ADMIN_USER}}],
            "current-context": "local",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        assert self.state
        context = ssl.create_default_context(cafile=str(self.root / "pki" / "apiserver.crt"))
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.state.server + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.state.token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                text = response.read()
                return response.status, json.loads(text) if text.startswith(b"{") else {}
        except urllib.error.HTTPError as err:
            return err.code, {}

    def ready(self) -> bool:
        try:
            return self.request("GET", "/readyz")[0] == 200
        except (OSError, ssl.SSLError):
            return False

    def _default_service_account(self) -> bool:
        return self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
            "spec": {},
        }
        code, _ = self.request("POST", "/api/v1/nodes", node)
        if code not in (201, 409):
            raise ControlPlaneError(f"creating node {NODE_NAME} answered HTTP {code}")

    def _wait(self, probe: Any, timeout: float, what: str) -> None:
        wait_while_alive(probe, timeout, what, self.state.pids if self.state else {}, self.root / "logs")


def wait_while_alive(
    probe: Any, timeout: float, what: str, pids: dict[str, int], logs: Path, error: type[Exception] = ControlPlaneError
) -> None:
    """Poll ``probe`` until true; fail at once, with the end of its log, when a process of ``pids`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        for name, pid in pids.items():
            if not alive(pid):
                log = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise error(f"{name} exited while waiting for {what}:\n{log}")
        time.sleep(0.2)
    raise error(f"timed out after {timeout:g}s waiting for {what}")


def _kubelet_client_pki(pki: Path) -> None:
    """A CA a real node's kubelet trusts for client certificates, and the API server's certificate from it."""
    if (pki / "kubelet-client.crt").exists():
        return

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=runbook-lab-kubelet-ca",
            "-keyout", str(pki / "kubelet-ca.key"), "-out", str(pki / "kubelet-ca.crt"))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "-keyout", str(pki / "kubelet-client.key"), "-out", str(pki / "kubelet-client.csr"))  # fmt: skip
    openssl("x509", "-req", "-in", str(pki / "kubelet-client.csr"), "-CA", str(pki / "kubelet-ca.crt"),
            "-CAkey", str(pki / "kubelet-ca.key"), "-CAcreateserial", "-days", "3650",
            "-out", str(pki / "kubelet-client.crt"))  # fmt: skip


def terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll its existence instead
            waited = 0 if Path(f"/proc/{pid}").exists() and alive(pid) else pid
        if waited == pid:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _reap(pid: int, grace: float = 10.0) -> None:
    """Wait for a killed process to be gone (reaped when it is our child)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not alive(pid):
                return
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--bin", type=Path, required=False, default=Path(os.environ.get("CONTROLPLANE_BIN", ".")))
    args = parser.parse_args(argv)
    plane = ControlPlane(args.dir, args.bin)
    if args.command == "up":
        reused = plane.state is not None and plane.running()
        started = time.monotonic()
        kubeconfig = plane.up()
        verb = "reused" if reused else f"started in {time.monotonic() - started:.1f}s"
        print(f"control plane {verb}: export KUBECONFIG={kubeconfig}")
    elif args.command == "down":
        plane.down()
        print("control plane stopped")
    else:
        print("running" if plane.running() else "stopped")
        return 0 if plane.running() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
