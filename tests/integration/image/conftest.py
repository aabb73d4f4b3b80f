"""A Docker engine, a Python base image made on this machine, and an offline build context.

No image registry is reachable from the test machines, so nothing is pulled:

* The engine is the host's /var/run/docker.sock when it answers, else a private dockerd
  started the way ``tests/integration/observability/conftest.py`` starts one (its own
  socket, data and exec roots; no bridge, no iptables), stopped by its pid at the end.
  That fixture is not imported: it also imports a busybox image and the action registry,
  and is session-scoped; this one is module-scoped, so the two daemons never overlap.
* ``local/python-base:test`` stands in for ``python:3.11-slim``: the interpreter these
  tests run on (``sys.base_prefix``) copied to /usr/local without its test suite, Tk and
  site-packages (pip excepted), the shared libraries ``ldd`` says it needs, the host's
  static busybox as /bin/sh, CA certificates, and a passwd with uid 65532. ``docker import``
  turns that directory into an image.
* The build context holds the Dockerfile's inputs and ``wheels/``: the project's
  dependencies and its build backend, fetched by this machine's pip (the host reaches
  PyPI; the build runs with ``--network none`` and ``WHEELS=prebuilt``).

Temporary directories are removed; the images made are removed from the engine.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.dockerd import docker_host

ROOT = Path(__file__).resolve().parents[3]
BUSYBOX = Path("/bin/busybox")
BASE_IMAGE = "local/python-base:test"
IMAGE = "local/runbook-operator:test"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
# parts of the standard library an operator never imports (python:3.11-slim drops some of them too)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages", "__phello__"}
# the system libraries the manylinux policy lets a wheel assume (those that exist on a glibc system)
MANYLINUX_LIBS = (
    *("libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1", "libresolv.so.2"),
    *("libnsl.so.1", "libcrypt.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1"),
)
# what the Dockerfile reads; the rest of the checkout stays out of the context
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")


@dataclass
class DockerCli:
    """The `docker` command line, pointed at one engine."""

    host: str
    own_daemon: bool

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        cli = shutil.which("docker")
        assert cli, "the docker command line is not installed (Debian: docker.io)"
        env = {**os.environ, "DOCKER_HOST": self.host}
        done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
            )
        return done

    def answers(self) -> bool:
        try:
            return self("version", "--format", "{{.Server.Version}}", timeout=5, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False


@pytest.fixture(scope="module")
def docker_cli() -> Iterator[DockerCli]:
    with docker_host(lambda host: DockerCli(host, own_daemon=False).answers(), "img-docker-") as (host, own):
        yield DockerCli(host, own_daemon=own)


# -- the base image -----------------------------------------------------------------------------------------


def _needed_libraries(binaries: list[Path]) -> set[Path]:
    """Every shared library (and the loader) ``ldd`` resolves for these files, outside the interpreter's prefix."""
    found: set[Path] = set()
    for binary in binaries:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            words = line.split()
            path = words[2] if len(words) >= 3 and words[1] == "=>" else words[0] if words else ""
            if path.startswith("/") and not Path(path).is_relative_to(sys.base_prefix):
                found.add(Path(path))
    libc = next((lib for lib in found if lib.name == "libc.so.6"), None)
    assert libc is not None, f"ldd found no libc for {binaries[0]}"
    # what manylinux wheels (pydantic-core, psycopg-binary, the CEL evaluator) may link to without bundling it
    found |= {libc.parent / name for name in MANYLINUX_LIBS if (libc.parent / name).exists()}
    return found


def python_rootfs(root: Path) -> None:
    """A minimal root filesystem with this machine's Python at /usr/local, laid out like python:3.11-slim."""
    prefix = Path(sys.base_prefix)
    local = root / "usr/local"
    stdlib = prefix / "lib" / PYTHON

    def skip(directory: str, names: list[str]) -> set[str]:
        if Path(directory) == stdlib:
            return {n for n in names if n in STDLIB_SKIP or n.startswith("config-")}
        return {n for n in names if n.startswith("_tkinter")}

    shutil.copytree(stdlib, local / "lib" / PYTHON, symlinks=True, ignore=skip)
    site = local / "lib" / PYTHON / "site-packages"
    site.mkdir()
    for entry in (stdlib / "site-packages").iterdir():
        if entry.name == "pip" or (entry.name.startswith("pip-") and entry.name.endswith(".dist-info")):
            shutil.copytree(entry, site / entry.name, symlinks=True)
    libpython = sysconfig.get_config_var("INSTSONAME")  # libpython3.11.so.1.0 for a shared build
    shared = prefix / "lib" / libpython if libpython and (prefix / "lib" / libpython).exists() else None
    if shared is not None:
        shutil.copy2(shared, local / "lib" / libpython)
    (local / "bin").mkdir(parents=True)
    shutil.copy2(prefix / "bin" / PYTHON, local / "bin" / PYTHON)
    for alias in ("python3", "python"):
        (local / "bin" / alias).symlink_to(PYTHON)

    dynload = sorted((local / "lib" / PYTHON / "lib-dynload").glob("*.so"))
    libraries = _needed_libraries([prefix / "bin" / PYTHON, *([shared] if shared else []), *dynload])
    for lib in libraries:
        target = root / lib.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, target)  # follows symlinks: the file under its soname
    etc = root / "etc"
    etc.mkdir()
    # /usr/local/lib first, as python:3.11-slim's ldconfig does; the cache is built for the new root
    lib_dirs = ["/usr/local/lib", *sorted({str(lib.parent) for lib in libraries})]
    (etc / "ld.so.conf").write_text("\n".join(lib_dirs) + "\n")
    (root / "var/cache/ldconfig").mkdir(parents=True)
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True, text=True)

    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in {*applets, "sh"} - {"busybox"}:
        (root / "bin" / applet).symlink_to("busybox")

    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/nonexistent:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    certs = etc / "ssl/certs"
    certs.mkdir(parents=True)
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", certs / "ca-certificates.crt")
    paths = ssl.get_default_verify_paths()  # where this OpenSSL looks: /usr/lib/ssl/cert.pem and certs/ on Debian
    for link, to in (
        (paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"),
        (paths.openssl_capath, "/etc/ssl/certs"),
    ):
        if link and not (root / link.lstrip("/")).exists():
            (root / link.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / link.lstrip("/")).symlink_to(to)
    for directory, mode in (("tmp", 0o1777), ("root", 0o700), ("proc", 0o755), ("sys", 0o755), ("dev", 0o755)):
        (root / directory).mkdir(exist_ok=True)
        (root / directory).chmod(mode)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@pytest.fixture(scope="module")
def python_base(docker_cli: DockerCli) -> Iterator[str]:
    """``local/python-base:test``; at the end it is removed with every image built on it."""
    workdir = Path(tempfile.mkdtemp(prefix="img-base-"))
    try:
        root = workdir / "rootfs"
        root.mkdir()
        python_rootfs(root)
        tarball = workdir / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name, filter=_as_root)
        shutil.rmtree(root)
        docker_cli(
            "import",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            str(tarball),
            BASE_IMAGE,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        yield BASE_IMAGE
    finally:
        # the build's stage images (the classic builder keeps them as cache) are newer than the base
        stages = docker_cli("images", "-q", "--filter", "dangling=true", "--filter", f"since={BASE_IMAGE}", check=False)
        docker_cli("rmi", "-f", IMAGE, check=False)
        for image in dict.fromkeys(stages.stdout.split()):
            docker_cli("rmi", "-f", image, check=False)
        docker_cli("rmi", "-f", BASE_IMAGE, check=False)


# -- the build context --------------------------------------------------------------------------------------


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"pip {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def build_context() -> Iterator[Path]:
    """A copy of the Dockerfile's inputs plus ``wheels/``: every dependency and the build backend, for this platform."""
    context = Path(tempfile.mkdtemp(prefix="img-context-"))
    try:
        for name in CONTEXT_FILES:
            shutil.copy2(ROOT / name, context / name)
        shutil.copytree(
            ROOT / "operator", context / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        # from a second copy, so the in-tree build's egg-info and build/ stay out of the context
        source = context.with_name(context.name + "-src")
        shutil.copytree(context, source)
        try:
            _pip("wheel", "--quiet", "--prefer-binary", "--wheel-dir", str(context / "wheels"), str(source))
        finally:
            shutil.rmtree(source, ignore_errors=True)
        _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(context / "wheels"), "setuptools>=77")
        yield context
    finally:
        shutil.rmtree(context, ignore_errors=True)
