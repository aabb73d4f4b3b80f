"""Container images for a real node, made on this machine: no registry is reachable.

* :func:`python_rootfs`: a root filesystem with this machine's Python at /usr/local, laid out
  like ``python:3.11-slim`` (the interpreter ``sys.base_prefix`` names, without its test suite
  and Tk; the shared libraries ``ldd`` says it and manylinux wheels need; the host's static
  busybox as /bin/sh; CA certificates; a passwd with uid 65532). Its ``.pyc`` files are
  hash-based, so nothing in it depends on a file's mtime.
* :func:`oci_archive`: a directory as a single-layer image archive, deterministically (sorted
  entries, fixed mtimes, owners as the files say), in the OCI image layout that
  ``ctr -n k8s.io images import`` reads, with a ``manifest.json`` too so ``docker load``
  (20.10 included) reads the same file.
* :func:`pause_image` / :func:`pause_archive`: the pod sandbox's image, :data:`PAUSE_REF`, from
  a static ``pause`` binary (``$(tools/node/build.sh)/pause``).
* :func:`lab_image`: the lab's service image: the Python root filesystem, the ``runbook_lab``
  sources and the pure-Python distributions it depends on (from this virtualenv). The ISH
  Chat services (``runbook_lab.ishchat``) need only the standard library.
* :func:`operator_image`: the project's Dockerfile built as ``tests/integration/image`` builds
  it (the Python base above, ``WHEELS=prebuilt``, ``--network none``) on a Docker engine
  (:mod:`runbook_lab.dockerd`), saved with ``docker save``.

Every image is cached by content in :func:`images_dir` (``$RUNBOOK_OPERATOR_CACHE/images``, as
``tools/cache.sh`` places its caches): the key hashes every input, a hit costs a few hashes
and starts nothing, and each ref's tag carries the key so a node never confuses two builds
(but :data:`PAUSE_REF`, the node's fixed ``sandbox_image``).

    python -m runbook_lab.images operator|lab|pause [--cache DIR] [--binary PAUSE]   # prints REF ARCHIVE
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import platform
import re
import shutil
import ssl
import stat
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

from packaging.requirements import Requirement

from runbook_lab.dockerd import DockerCli, docker_host

log = logging.getLogger(__name__)

# the checkout this lab is installed from (editable): the Dockerfile's context
ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = Path("/bin/busybox")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
# parts of the standard library an operator never imports (python:3.11-slim drops some of them too)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages", "__phello__"}
# the system libraries the manylinux policy lets a wheel assume (those that exist on a glibc system)
MANYLINUX_LIBS = (
    *("libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1", "libresolv.so.2"),
    *("libnsl.so.1", "libcrypt.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1"),
)
PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
NONROOT = "65532:65532"

# what the Dockerfile reads (its .dockerignore lets in only these, operator/ and wheels/)
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_IGNORE = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info")
OPERATOR_REPOSITORY = "runbook-operator"  # the chart's image.repository
PYTHON_BASE_REPOSITORY = "runbook-operator.local/python-base"
LAB_REPOSITORY = "runbook-operator.local/lab"
PAUSE_REF = "runbook-operator.local/pause:3.10"  # the node's sandbox_image
PAUSE_USER = "65535:65535"  # as registry.k8s.io/pause

# the layer's fixed mtime, and the config's "created"
EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"
GZIP_LEVEL = 1  # 54 MB and 1.8 s for the lab's 200 MB layer; level 6: 44 MB and 5.1 s
KEEP = 3  # archives of one kind kept in the cache (the newest)
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


class ImageError(RuntimeError):
    """An image could not be made; the message says why."""


class Image(NamedTuple):
    """A ref and the archive that holds it (``ctr -n k8s.io images import`` or ``docker load`` it)."""

    ref: str
    archive: Path

    @property
    def repository(self) -> str:
        return self.ref.rpartition(":")[0]

    @property
    def tag(self) -> str:
        """For ``helm --set image.tag=``."""
        return self.ref.rpartition(":")[2]


# -- cache ---------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$RUNBOOK_OPERATOR_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/runbook-operator`` (as tools/cache.sh)."""
    if root := os.environ.get("RUNBOOK_OPERATOR_CACHE"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runbook-operator"


def images_dir() -> Path:
    return cache_root() / "images"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tree_files(top: Path, ignore: Sequence[str] = CONTEXT_IGNORE) -> list[Path]:
    """Every file below ``top`` (sorted, symlinks not followed), leaving out what ``ignore``'s patterns match."""
    found = []
    for directory, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not any(Path(d).match(p) for p in ignore))
        found += [Path(directory, f) for f in filenames if not any(Path(f).match(p) for p in ignore)]
    return sorted(found)


def _digest_files(hasher: Any, base: Path, files: Iterable[Path]) -> None:
    for path in sorted(files):
        data = path.read_bytes()
        hasher.update(f"{path.relative_to(base).as_posix()}\0{len(data)}\0".encode())
        hasher.update(data)


def python_identity() -> str:
    """What :func:`python_rootfs` copies and how: a change to any of it makes new images."""
    parts = [
        sys.version,
        sys.base_prefix,
        platform.machine(),
        "-".join(platform.libc_ver()),
        _file_sha256(BUSYBOX),
        _file_sha256(CA_BUNDLE),
        _file_sha256(Path(__file__)),  # the recipes here
    ]
    return _sha256("\n".join(parts).encode())


def _store(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename: an interrupted build leaves no archive a later call would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _prune(directory: Path, prefix: str, keep: int = KEEP) -> None:
    """Keep the newest ``keep`` archives named ``prefix-*.tar``."""
    archives = sorted(directory.glob(f"{prefix}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)


# -- the Python root filesystem ------------------------------------------------------------------------------


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
    if libc is None:
        raise ImageError(f"ldd found no libc for {binaries[0]}")
    # what manylinux wheels (pydantic-core, psycopg-binary, the CEL evaluator) may link to without bundling it
    found |= {libc.parent / name for name in MANYLINUX_LIBS if (libc.parent / name).exists()}
    return found


def _hash_based_pycs(top: Path) -> None:
    """Turn the valid timestamp ``.pyc`` files below ``top`` into checked-hash ones; drop the rest.

    A timestamp pyc records its source's mtime, which an image's fixed mtimes would make stale
    (Python would recompile every module at every start). The code is kept as compiled; only
    the 16-byte header changes (PEP 552). Optimized (``.opt-N``) files go: nothing runs ``-O``.
    """
    magic, tag = importlib.util.MAGIC_NUMBER, sys.implementation.cache_tag
    for pyc in sorted(top.rglob("__pycache__/*.pyc")):
        stem, _, rest = pyc.name.partition(".")
        source = pyc.parent.parent / f"{stem}.py"
        data = pyc.read_bytes()
        if rest != f"{tag}.pyc" or data[:4] != magic or len(data) < 16 or not source.is_file():
            pyc.unlink()
            continue
        flags, mtime, size = struct.unpack("<III", data[4:16])
        if flags & 1:
            continue  # hash-based already
        st = source.stat()
        if mtime != int(st.st_mtime) & 0xFFFFFFFF or size != st.st_size & 0xFFFFFFFF:
            pyc.unlink()  # stale: Python would not use it either
            continue
        checked = struct.pack("<I", 0b11)  # hash-based, check the source
        pyc.write_bytes(magic + checked + importlib.util.source_hash(source.read_bytes()) + data[16:])


def _compile(packages: Sequence[Path], root: Path) -> None:
    """Checked-hash ``.pyc`` files for these package directories, named as the image sees them (/usr/local/...).

    In a fresh interpreter (``-I``, fixed hash seed), one file after another in sorted order:
    marshal's output depends on the compiling process's state, and this keeps it the same from
    build to build.
    """
    script = (
        "import compileall, py_compile, sys\n"
        "for top in sys.argv[2:]:\n"
        "    compileall.compile_dir(top, quiet=2, stripdir=sys.argv[1], prependdir='/', workers=1,\n"
        "        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-I", "-c", script, str(root), *map(str, packages)]
    subprocess.run(command, check=True, capture_output=True, env=env)


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
    _hash_based_pycs(local / "lib" / PYTHON)
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
    (root / "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)  # ldconfig's own, with inode numbers and times

    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in sorted({*applets, "sh"} - {"busybox"}):
        (root / "bin" / applet).symlink_to("busybox")

    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/nonexistent:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    certs = etc / "ssl/certs"
    certs.mkdir(parents=True)
    shutil.copy2(CA_BUNDLE, certs / "ca-certificates.crt")
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


# -- OCI archives ----------------------------------------------------------------------------------------------


def normalize_ref(ref: str) -> str:
    """``name:tag`` as containerd and the kubelet name it: ``pause:1`` -> ``docker.io/library/pause:1``."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not _TAG.fullmatch(tag) or "@" in ref:
        raise ImageError(f"{ref!r} is not NAME:TAG")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
        if "/" not in path:
            path = f"library/{path}"
    if not _NAME.fullmatch(path):
        raise ImageError(f"{ref!r}: {path!r} is not a repository name (lower case, digits, separators)")
    return f"{domain}/{path}:{tag}"


class _Sink(Protocol):
    def write(self, data: Any, /) -> Any: ...


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``target``."""

    def __init__(self, target: _Sink) -> None:
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        self.target.write(view)
        return len(view)


def _entries(top: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(archive name, path) for everything below ``top``, sorted by name, a directory before its contents."""
    with os.scandir(top) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        yield name, Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _entries(Path(entry.path), name + "/")


def _layer_info(tar: tarfile.TarFile, path: Path, name: str) -> tarfile.TarInfo:
    """The member for one file: fixed mtime, no user or group names, owners and modes as the file says.

    Files the building user owns are root's in the image (uid/gid 0); any other owner is kept
    (``chown 65532`` in a root filesystem made as root). A set-uid or set-gid bit is dropped
    where the owner it refers to was remapped: the builder's own set-uid file must not become
    set-uid root. Symlinks are stored as links (never followed), hard links as links to the
    first name, in sorted order.
    """
    st = path.lstat()
    if stat.S_ISSOCK(st.st_mode):
        raise ImageError(f"{path}: a socket cannot go into an image")
    info = tar.gettarinfo(str(path), arcname=name)
    mode = stat.S_IMODE(st.st_mode)
    uid = 0 if st.st_uid == os.geteuid() else st.st_uid
    gid = 0 if st.st_gid == os.getegid() else st.st_gid
    if uid != st.st_uid:
        mode &= ~stat.S_ISUID
    if gid != st.st_gid and not stat.S_ISDIR(st.st_mode):
        mode &= ~stat.S_ISGID
    info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = mode, uid, gid, "", "", EPOCH
    return info


def _write_layer(rootfs: Path, out: IO[bytes], compress: bool) -> tuple[str, str, int]:
    """The layer tar of ``rootfs`` into ``out``: (diff id, blob digest, blob size) as ``sha256:...``."""
    blob = _Hashing(out)
    zipped = (
        gzip.GzipFile(filename="", mode="wb", fileobj=blob, compresslevel=GZIP_LEVEL, mtime=0) if compress else None
    )
    plain = _Hashing(zipped if zipped is not None else blob)
    buffered = io.BufferedWriter(plain, buffer_size=1 << 20)
    with tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _entries(rootfs):
            info = _layer_info(tar, path, name)
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    buffered.flush()
    if zipped is not None:
        zipped.close()
    return f"sha256:{plain.sha.hexdigest()}", f"sha256:{blob.sha.hexdigest()}", blob.size


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _member(name: str, size: int, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, EPOCH
    return info


def oci_archive(
    rootfs: Path,
    out: Path,
    ref: str,
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    user: str = "",
    env: Mapping[str, str] | None = None,
    workdir: str = "/",
    labels: Mapping[str, str] | None = None,
    compress: bool = True,
) -> Path:
    """Write ``rootfs`` as a single-layer image named ``ref`` to ``out`` (a tar file) and return ``out``.

    The archive is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``: the
    config, the manifest and one layer, gzip unless ``compress=False``) whose index names the
    image twice: ``io.containerd.image.name`` is the full ref (``ctr images import`` uses it as
    is) and ``org.opencontainers.image.ref.name`` the tag (as containerd and BuildKit write it).
    A ``manifest.json`` points at the same blobs, so ``docker load`` reads it too. The same
    directory gives the same bytes: entries sorted, mtimes fixed, no user names, JSON with
    sorted keys, a gzip header without name or time.
    """
    full = normalize_ref(ref)
    architecture = GOARCH.get(platform.machine(), platform.machine())
    environment = {"PATH": PATH, **(env or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out.parent) as layer:
        diff_id, layer_digest, layer_size = _write_layer(rootfs, layer, compress)
        image_config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in environment.items()], "WorkingDir": workdir}
        if entrypoint:
            image_config["Entrypoint"] = list(entrypoint)
        if cmd:
            image_config["Cmd"] = list(cmd)
        if user:
            image_config["User"] = user
        if labels:
            image_config["Labels"] = dict(labels)
        config = _json({
            "architecture": architecture,
            "os": "linux",
            "created": CREATED,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": f"runbook_lab.images.oci_archive {ref}"}],
        })  # fmt: skip
        config_digest = f"sha256:{_sha256(config)}"
        layer_type = OCI_LAYER + ("+gzip" if compress else "")
        manifest = _json({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": layer_size}],
        })  # fmt: skip
        manifest_digest = f"sha256:{_sha256(manifest)}"
        index = _json({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {CONTAINERD_NAME: full, REF_NAME: ref.rpartition(":")[2]},
            }],
        })  # fmt: skip
        blob = "blobs/sha256/{}".format
        docker_manifest = _json([{
            "Config": blob(config_digest[7:]), "RepoTags": [ref], "Layers": [blob(layer_digest[7:])],
        }])  # fmt: skip

        def write(tmp: Path) -> None:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for name, data in (("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)):
                    tar.addfile(_member(name, len(data)), io.BytesIO(data))
                tar.addfile(_member("manifest.json", len(docker_manifest)), io.BytesIO(docker_manifest))
                for directory in ("blobs", "blobs/sha256"):
                    tar.addfile(_member(directory, 0, 0o755, tarfile.DIRTYPE))
                tar.addfile(_member(blob(config_digest[7:]), len(config)), io.BytesIO(config))
                tar.addfile(_member(blob(manifest_digest[7:]), len(manifest)), io.BytesIO(manifest))
                layer.seek(0)
                tar.addfile(_member(blob(layer_digest[7:]), layer_size), layer)

        return _store(out, write)


# -- pause -----------------------------------------------------------------------------------------------------


def _interpreter(binary: Path) -> bytes | None:
    """The ELF program interpreter (PT_INTERP) a binary asks for, None for a static one."""
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ImageError(f"{binary} is not an ELF executable")
    order = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # 64-bit
        phoff, phentsize, phnum = struct.unpack_from(f"{order}Q14xHH", data, 0x20)
    else:
        phoff, phentsize, phnum = struct.unpack_from(f"{order}I10xHH", data, 0x1C)
    for i in range(phnum):
        header = phoff + i * phentsize
        (p_type,) = struct.unpack_from(f"{order}I", data, header)
        if p_type == 3:  # PT_INTERP
            if data[4] == 2:
                offset, size = struct.unpack_from(f"{order}Q16xQ", data, header + 8)
            else:
                offset, size = struct.unpack_from(f"{order}I8xI", data, header + 4)
            return data[offset : offset + size].rstrip(b"\0")
    return None


def pause_image(binary: Path, cache_dir: Path | None = None, ref: str = PAUSE_REF) -> Image:
    """The pod sandbox's image: ``binary`` (static) as /pause, run as 65535, like registry.k8s.io/pause."""
    if (interpreter := _interpreter(binary)) is not None:
        raise ImageError(f"{binary} is not static (it asks for {interpreter.decode()}): the image has no libc")
    cache_dir = cache_dir or images_dir()
    key = _sha256(f"{ref}\0{_file_sha256(binary)}\0{_file_sha256(Path(__file__))}".encode())
    archive = cache_dir / f"pause-{key}.tar"
    if not archive.exists():
        with tempfile.TemporaryDirectory(prefix="pause-") as tmp:
            root = Path(tmp)
            shutil.copyfile(binary, root / "pause")
            (root / "pause").chmod(0o755)
            oci_archive(root, archive, ref, entrypoint=["/pause"], user=PAUSE_USER)
        _prune(cache_dir, "pause")
    return Image(ref, archive)


def pause_archive(binary: Path, cache_dir: Path | None = None) -> Path:
    """:data:`PAUSE_REF`'s archive, for ``ctr -n k8s.io images import``."""
    return pause_image(binary, cache_dir).archive


# -- the lab's service image ------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lab_distributions() -> list[importlib.metadata.Distribution]:
    """runbook-lab and every distribution it needs (its extras' too, as installed), by name."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending: list[tuple[str, frozenset[str]]] = [("runbook-lab", frozenset())]
    while pending:
        name, extras = pending.pop()
        if _canonical(name) in found:
            continue
        dist = importlib.metadata.distribution(name)
        found[_canonical(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                pending.append((req.name, frozenset(req.extras)))
    return [found[key] for key in sorted(found)]


def _editable_packages(dist: importlib.metadata.Distribution) -> list[Path] | None:
    """The package directories of a distribution that runs from its sources (``pip install -e``, or
    the ``*.egg-info`` an earlier setuptools build left beside them), None for an installed one.

    Judged by where its packages are imported from, not by its metadata: the checkout's leftover
    ``lab/runbook_lab.egg-info`` has no WHEEL and no editable mark, and when importlib finds it
    first, the lab was left out of the lab image as "not pure Python"."""
    tops = (dist.read_text("top_level.txt") or "").split() or [_canonical(dist.metadata["Name"]).replace("-", "_")]
    site = Path(str(dist.locate_file(""))).resolve()
    packages = []
    for top in tops:
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            return None  # a module, or not importable: treat it as installed
        location = Path(next(iter(spec.submodule_search_locations))).resolve()
        if location.is_relative_to(site) and "site-packages" in location.parts:
            return None
        packages.append(location)
    return packages


def _is_pure(dist: importlib.metadata.Distribution, packages: list[Path] | None) -> bool:
    if packages is not None:
        return not any(p.suffix == ".so" for package in packages for p in _tree_files(package))
    wheel = dist.read_text("WHEEL") or ""
    compiled = any(str(f).endswith(".so") or ".so." in str(f) for f in dist.files or [])
    return "Root-Is-Purelib: true" in wheel and not compiled


_DIST_INFO_SKIP = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _install(dist: importlib.metadata.Distribution, packages: list[Path] | None, site: Path) -> None:
    """Copy one installed distribution into ``site``: its files and metadata, no scripts, caches or editable hooks."""
    for package in packages or []:
        shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns(*CONTEXT_IGNORE))
    for file in dist.files or []:
        parts = file.parts
        if parts[0] == ".." or "__pycache__" in parts or file.name in _DIST_INFO_SKIP:
            continue  # console scripts (bin/), compiled files, pip's bookkeeping
        if packages is not None and not parts[0].endswith(".dist-info"):
            continue  # the editable install's .pth and finder
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(str(dist.locate_file(file))), target)


def lab_image(out_dir: Path | None = None) -> Image:
    """The lab's service image: Python, ``runbook_lab`` and its pure-Python dependencies; as 65532.

    ``python3`` is the command (as in python:3.11-slim); a pod names what to run, e.g.
    ``python3 -c "from runbook_lab.ishchat import IshChat; ..."``. Distributions with compiled
    extensions (pydantic-core, psycopg-binary, PyYAML's, aiohttp's, ...) are left out, so of
    the lab's modules those on the standard library alone (ishchat, demo, kubelet) import.
    """
    out_dir = out_dir or images_dir()
    pure, left_out = [], []
    for dist in _lab_distributions():
        packages = _editable_packages(dist)
        if _is_pure(dist, packages):
            pure.append((dist, packages))
        else:
            left_out.append(dist.metadata["Name"])
    hasher = hashlib.sha256(python_identity().encode())
    for dist, packages in pure:
        hasher.update(f"\0{dist.metadata['Name']}=={dist.version}\0".encode())
        if packages is None:
            hasher.update((dist.read_text("RECORD") or "").encode())  # every file's hash
        for package in packages or []:
            _digest_files(hasher, package.parent, _tree_files(package))
    key = hasher.hexdigest()
    version = importlib.metadata.version("runbook-lab")
    ref = f"{LAB_REPOSITORY}:{version}-{key[:12]}"
    archive = out_dir / f"runbook-lab-{key}.tar"
    if archive.exists():
        return Image(ref, archive)
    started = time.monotonic()
    log.info("building %s (left out, not pure Python: %s)", ref, ", ".join(left_out))
    with tempfile.TemporaryDirectory(prefix="lab-image-") as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        python_rootfs(root)
        site = root / "usr/local/lib" / PYTHON / "site-packages"
        for dist, packages in pure:
            _install(dist, packages, site)
        if not (site / "runbook_lab" / "workload.py").is_file():  # an image without it would only fail in a pod
            raise ImageError(f"the lab image has no runbook_lab package (looked in {site})")
        # ours only: the dependencies' would cost 17 s and 16 MB more (kubernetes alone is 75 MB of sources)
        _compile([site / package.name for _, packages in pure for package in packages or []], root)
        env = {"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        labels = {"org.opencontainers.image.title": "runbook-lab", "org.opencontainers.image.version": version}
        oci_archive(root, archive, ref, cmd=["python3"], user=NONROOT, env=env, labels=labels)
    _prune(out_dir, "runbook-lab")
    log.info("built %s in %.1fs: %s (%.1f MB)", ref, time.monotonic() - started, archive, archive.stat().st_size / 1e6)
    return Image(ref, archive)


# -- the operator's image ---------------------------------------------------------------------------------------


def _operator_inputs(source: Path) -> list[Path]:
    """What the Dockerfile's context holds of the checkout (wheels aside)."""
    return [*(source / name for name in CONTEXT_FILES), *_tree_files(source / "operator")]


def operator_key(source: Path = ROOT) -> str:
    """The operator image's cache key: the context's files (sorted paths and contents) and the Python base."""
    hasher = hashlib.sha256(python_identity().encode())
    _digest_files(hasher, source, _operator_inputs(source))
    return hasher.hexdigest()


def python_base(cache_dir: Path | None = None) -> Image:
    """:func:`python_rootfs` as an image archive (uncompressed: it only goes to a local ``docker load``)."""
    cache_dir = cache_dir or images_dir()
    key = python_identity()
    ref = f"{PYTHON_BASE_REPOSITORY}:{platform.python_version()}-{key[:12]}"
    archive = cache_dir / f"python-base-{key}.tar"
    if not archive.exists():
        with tempfile.TemporaryDirectory(prefix="python-base-") as tmp:
            root = Path(tmp) / "rootfs"
            root.mkdir()
            python_rootfs(root)
            oci_archive(root, archive, ref, cmd=["python3"], env={"LANG": "C.UTF-8"}, compress=False)
        _prune(cache_dir, "python-base")
    return Image(ref, archive)


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise ImageError(f"pip {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def operator_wheels(cache_dir: Path | None = None, source: Path = ROOT) -> Path:
    """Wheels of the operator's dependencies and of its build backend, fetched by this machine's pip, cached.

    Keyed by pyproject.toml and the interpreter: the versions resolved the first time stay
    until either changes.
    """
    cache_dir = cache_dir or images_dir()
    pyproject = (source / "pyproject.toml").read_bytes()
    key = _sha256(pyproject + f"\0{sys.version}\0{platform.machine()}".encode())
    wheels = cache_dir / "wheels" / key[:16]
    if (wheels / ".complete").exists():
        return wheels
    project = tomllib.loads(pyproject.decode())
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    _pip("wheel", "--quiet", "--prefer-binary", "--wheel-dir", str(wheels), *project["project"]["dependencies"])
    _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(wheels), *project["build-system"]["requires"])
    (wheels / ".complete").touch()
    others = sorted((p for p in wheels.parent.iterdir() if p != wheels), key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) - (KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return wheels


def build_context(context: Path, wheels: Path, source: Path = ROOT) -> Path:
    """The Dockerfile's inputs and ``wheels/`` in ``context`` (which must not exist yet)."""
    context.mkdir(parents=True)
    for path in _operator_inputs(source):
        target = context / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.copytree(wheels, context / "wheels", ignore=shutil.ignore_patterns(".complete"))
    return context


def build_operator(docker: DockerCli, ref: str, base: str, context: Path) -> None:
    """``docker build`` the Dockerfile as the image tests do: offline, on ``base``, from ``wheels/``."""
    docker(
        *("build", "--network", "none", "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "WHEELS=prebuilt"),
        *("--tag", ref, str(context)),
        timeout=900,
    )


def remove_build(docker: DockerCli, ref: str, base: str) -> None:
    """Remove the image, the build's stage images (the classic builder keeps them, newer than the base) and the base."""
    stages = docker("images", "-q", "--filter", "dangling=true", "--filter", f"since={base}", check=False)
    docker("rmi", "-f", ref, check=False)
    for image in dict.fromkeys(stages.stdout.split()):
        docker("rmi", "-f", image, check=False)
    docker("rmi", "-f", base, check=False)


@contextlib.contextmanager
def _engine(docker: DockerCli | None) -> Iterator[tuple[DockerCli, bool]]:
    """The caller's engine, else the host's or a private one: (engine, whether the images made are ours to remove)."""
    if docker is not None:
        yield docker, False
        return
    with docker_host(prefix="rbo-img-") as (host, own):
        yield DockerCli(host, own_daemon=own), not own


def _version(source: Path) -> str:
    """The operator's version as its sources say it (``runbook_operator.__version__``), read without
    importing them: the image is built from ``source``, which need not be what this process runs."""
    text = (source / "operator" / "runbook_operator" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if found is None:
        raise ValueError(f"{source}: no __version__ in operator/runbook_operator/__init__.py")
    return found.group(1)


def operator_image(cache_dir: Path | None = None, *, docker: DockerCli | None = None, source: Path = ROOT) -> Image:
    """The operator's image as a ``docker save`` archive: ``runbook-operator:<version>-<key12>``.

    A hit (the archive for this key exists) returns at once and starts nothing. A miss builds
    on ``docker`` if given (the images stay there: the caller removes them, :func:`remove_build`),
    else on the host's engine or a private one (see :mod:`runbook_lab.dockerd`), removing
    what it made.
    """
    cache_dir = cache_dir or images_dir()
    key = operator_key(source)
    version = _version(source)
    ref = f"{OPERATOR_REPOSITORY}:{version}-{key[:12]}"
    archive = cache_dir / f"runbook-operator-{key}.tar"
    if archive.exists():
        return Image(ref, archive)
    started = time.monotonic()
    log.info("building %s (cache miss)", ref)
    wheels = operator_wheels(cache_dir, source)
    base = python_base(cache_dir)
    log.info("wheels and the Python base ready after %.1fs", time.monotonic() - started)
    with tempfile.TemporaryDirectory(prefix="rbo-context-") as tmp, _engine(docker) as (engine, cleanup):
        context = build_context(Path(tmp) / "context", wheels, source)
        try:
            step = time.monotonic()
            engine("load", "--input", str(base.archive), timeout=600)
            log.info("engine %s and the base loaded after %.1fs", engine.host, time.monotonic() - started)
            step = time.monotonic()
            build_operator(engine, ref, base.ref, context)
            log.info("docker build took %.1fs", time.monotonic() - step)
            step = time.monotonic()
            _store(archive, lambda tmp_archive: engine("save", "--output", str(tmp_archive), ref, timeout=600))
            log.info("docker save took %.1fs", time.monotonic() - step)
        finally:
            if cleanup:
                remove_build(engine, ref, base.ref)
    _prune(cache_dir, "runbook-operator")
    log.info("built %s in %.1fs: %s (%.1f MB)", ref, time.monotonic() - started, archive, archive.stat().st_size / 1e6)
    return Image(ref, archive)


# -- command line ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runbook_lab.images", description="Make an image archive, print REF ARCHIVE."
    )
    parser.add_argument("image", choices=("operator", "lab", "pause"))
    parser.add_argument("--cache", type=Path, default=None, help=f"the archives' directory (default: {images_dir()})")
    parser.add_argument("--binary", type=Path, help="pause: the static pause binary, $(tools/node/build.sh)/pause")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[images] %(message)s", stream=sys.stderr)
    try:
        if args.image == "operator":
            image = operator_image(args.cache)
        elif args.image == "lab":
            image = lab_image(args.cache)
        else:
            if args.binary is None:
                parser.error('pause needs --binary, e.g. --binary "$(tools/node/build.sh)/pause"')
            image = pause_image(args.binary, args.cache)
    except (ImageError, OSError, subprocess.CalledProcessError) as err:
        print(f"images: {err}", file=sys.stderr)
        return 1
    print(image.ref, image.archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
