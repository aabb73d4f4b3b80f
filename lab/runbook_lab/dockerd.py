"""A Docker engine to build and load images with: the host's, when it answers, else a private one.

:func:`docker_host` yields the host's ``/var/run/docker.sock`` when it answers; otherwise it
starts a dockerd of our own: its own socket, data and exec roots, nothing on the host's
network (no bridge, NAT or forwarding), and its own containerd (:func:`containerd`). Without
``--containerd`` a dockerd attaches to ``/run/containerd/containerd.sock`` whenever that
socket exists (a system containerd, or a node's), and would put its images and build
containers there; so the private dockerd always gets a private containerd. Both are stopped
by their pids, and their directories, leftover shims, mounts and empty cgroups removed.

:func:`containerd` alone is a private containerd (own root, state, socket and ``opt``
directory; no CRI plugin) for ``ctr``: ``ctr images import`` and ``ctr run`` against it
touch nothing a node's containerd uses (:meth:`Containerd.ctr` points runc's state and the
I/O fifos into its directory too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DOCKERD = Path("/usr/sbin/dockerd")
CONTAINERD = Path("/usr/bin/containerd")
CTR = Path("/usr/bin/ctr")
HOST_SOCKET = "unix:///var/run/docker.sock"
DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false")
# snapshotters that probe the kernel (modprobe) or need their own devices, and what a node needs but we do not
CONTAINERD_DISABLED = (
    "io.containerd.grpc.v1.cri",
    *("io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs"),
    *("io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"),
    *("io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"),
)


class DockerError(RuntimeError):
    """A docker, dockerd, containerd or ctr command failed; the message carries its output."""


@dataclass
class DockerCli:
    """The `docker` command line, pointed at one engine."""

    host: str
    own_daemon: bool = False

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        cli = shutil.which("docker")
        if cli is None:
            raise DockerError("the docker command line is not installed (Debian: docker.io)")
        env = {**os.environ, "DOCKER_HOST": self.host}
        done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise DockerError(_failed(f"docker {' '.join(args)}", done))
        return done

    def answers(self) -> bool:
        try:
            return self("version", "--format", "{{.Server.Version}}", timeout=5, check=False).returncode == 0
        except (subprocess.TimeoutExpired, DockerError):
            return False


@dataclass
class Containerd:
    """A private containerd: ``address`` is its socket; :meth:`ctr` runs ``ctr`` against it."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Path:
        return self.workdir / "containerd.sock"

    def ctr(
        self, *args: str, namespace: str = "k8s.io", timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ctr --address ... --namespace ... ARGS``.

        For ``run``: runc's state and the fifos stay in workdir, and the container's cgroup is
        ``/<id>``, which runc removes with it (ctr's default, ``/<namespace>/<id>``, leaves the
        ``/<namespace>`` parent behind in every hierarchy).
        """
        if args[:1] == ("run",):
            runc, fifos = self.workdir / "runc", self.workdir / "fifo"
            args = ("run", f"--runc-root={runc}", f"--fifo-dir={fifos}", "--cgroup=", *args[1:])
        command = [str(CTR), "--address", str(self.address), "--namespace", namespace, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise DockerError(_failed(f"ctr {' '.join(args)}", done))
        return done


def _failed(what: str, done: subprocess.CompletedProcess[str]) -> str:
    return f"{what} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DockerError(f"{what} exited {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise DockerError(f"timed out after {timeout:g}s waiting for {what}: {log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """Stop one process we started, by its pid: TERM, then KILL if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _shims(address: Path) -> list[int]:
    """The pids of the shims our containerd started (they outlive it): their command line names its socket."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().split(b"\0")
            if words and words[0].endswith(b"containerd-shim-runc-v2") and str(address).encode() in words:
                pids.append(int(cmdline.parent.name))
    return pids


def _unmount_under(directory: Path) -> None:
    """Lazily unmount whatever is still mounted below our directory (a container's rootfs), deepest first."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if Path(point).is_relative_to(directory):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _drop_empty_cgroups() -> None:
    """The `docker` parent cgroups a dockerd made; rmdir fails (and is ignored) while any container is in one."""
    for parent in Path("/sys/fs/cgroup").glob("*/docker"):
        with contextlib.suppress(OSError):
            parent.rmdir()
    with contextlib.suppress(OSError):
        Path("/sys/fs/cgroup/docker").rmdir()  # cgroup v2


@contextlib.contextmanager
def containerd(prefix: str = "ctrd-", timeout: float = 60.0) -> Iterator[Containerd]:
    """A private containerd in a new temporary directory, stopped (with its shims) and removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))  # short: a unix socket path must stay under 108 bytes
    daemon = Containerd(workdir)
    disabled = ", ".join(f'"{name}"' for name in CONTAINERD_DISABLED)
    config = workdir / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{workdir / "root"}"\nstate = "{workdir / "state"}"\ndisabled_plugins = [{disabled}]\n'
        f'[grpc]\n  address = "{daemon.address}"\n[ttrpc]\n  address = "{daemon.address}.ttrpc"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{workdir / "opt"}"\n'
    )
    log_path = workdir / "containerd.log"
    try:
        with log_path.open("wb") as log:
            daemon.proc = subprocess.Popen(
                [str(CONTAINERD), "--config", str(config), "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            )  # fmt: skip
        _wait(lambda: daemon.ctr("version", check=False).returncode == 0, daemon.proc, log_path, timeout, "containerd")
        yield daemon
    finally:
        if daemon.proc is not None:
            stop(daemon.proc)
        for pid in _shims(daemon.address):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def docker_host(answers: Callable[[str], bool] | None = None, prefix: str = "docker-") -> Iterator[tuple[str, bool]]:
    """Yield (host URL, whether we started the daemon); ``answers(host)`` says whether an engine responds there."""
    probe = answers or (lambda host: DockerCli(host).answers())
    if probe(HOST_SOCKET):
        yield HOST_SOCKET, False
        return
    with containerd(prefix=f"{prefix}c-") as own_containerd:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        host = f"unix://{workdir}/docker.sock"
        log_path = workdir / "dockerd.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(DOCKERD), f"--host={host}", f"--data-root={workdir / 'data'}", f"--exec-root={workdir / 'exec'}",
                 f"--pidfile={workdir / 'pid'}", f"--containerd={own_containerd.address}", *DOCKERD_FLAGS],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            )  # fmt: skip
        try:
            _wait(lambda: probe(host), proc, log_path, 60, "dockerd")
            yield host, True
        finally:
            stop(proc)
            _drop_empty_cgroups()
            _unmount_under(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
