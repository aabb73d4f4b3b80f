"""Image archives made without a registry (runbook_lab.images): reproducible, valid, importable, runnable.

* :func:`oci_archive` gives the same bytes for the same directory (mtimes aside), and every
  digest and size in it checks out; the layer keeps owners, set-uid bits and symlinks as the
  files say, and never follows a link.
* The archive imports into a containerd as ``ctr -n k8s.io images import`` does on the node
  (a private containerd here: own root, state and socket) under the name in the index, and a
  container of it runs; ``docker load`` reads the same file.
* The lab's image runs the simulated ISH Chat as uid 65532 with nothing but the standard
  library; the pause image is a static binary as /pause.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook_lab import images
from runbook_lab.dockerd import Containerd, DockerCli, containerd
from runbook_lab.images import Image, ImageError, lab_image, normalize_ref, oci_archive, pause_image
from tests.integration.image.conftest import ROOT

BUSYBOX = Path("/bin/busybox")
REF = "runbook-operator.local/test/busybox:1"

# runs in the lab's image: the ISH Chat services answer, and nothing outside the standard library was imported
ISHCHAT_SMOKE = """
import json, sys, urllib.request
from runbook_lab.ishchat import EXPORTER_PORTS, SERVICES, IshChat
sim = IshChat({service: "127.0.0.1" for service in SERVICES}, "127.0.0.1").start()
answers = {}
for port in [*SERVICES.values(), *EXPORTER_PORTS.values()]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        answers[port] = response.status
sim.stop()
foreign = sorted(m for m in sys.modules if m.split(".")[0] not in {*sys.stdlib_module_names, "runbook_lab", "__main__"})
print(json.dumps({"answers": sorted(set(answers.values())), "foreign": foreign}))
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A small root filesystem with what a layer must get right: links, owners, modes, special bits."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in ("sh", "echo", "id", "ls", "stat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/data.txt").write_text("data\n")
    (root / "lib").symlink_to("usr/lib")  # a link to a directory: stored as a link, never followed
    (root / "etc").mkdir()
    (root / "etc/hostname-link").symlink_to("/etc/hostname")  # absolute, dangling on the host
    os.link(root / "usr/lib/data.txt", root / "etc/data-hardlink")
    (root / "home/nonroot").mkdir(parents=True)
    (root / "home/nonroot/owned").write_text("mine\n")
    os.chown(root / "home/nonroot", 65532, 65532)
    os.chown(root / "home/nonroot/owned", 65532, 65532)
    (root / "bin/suid").write_bytes(b"#!/bin/sh\n")
    (root / "bin/suid").chmod(0o4755)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "empty").mkdir()
    return root


def _archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _layer(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return tar.getmembers()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _verified(path: Path, ref: str) -> dict[str, Any]:
    """Check every digest and size the archive names; return its config and the layer's bytes."""
    files = _archive(path)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert _sha(data) == "sha256:" + name.rsplit("/", 1)[1], f"{name} does not hash to its name"
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [entry] = index["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": normalize_ref(ref),
        "org.opencontainers.image.ref.name": ref.rpartition(":")[2],
    }

    def get(descriptor: dict[str, Any]) -> bytes:
        data = files[f"blobs/sha256/{descriptor['digest'].removeprefix('sha256:')}"]
        assert len(data) == descriptor["size"] and _sha(data) == descriptor["digest"]
        return data

    manifest = json.loads(get(entry))
    assert manifest["mediaType"] == entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(get(manifest["config"]))
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer_bytes = get(layer)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [_sha(gzip.decompress(layer_bytes))]}
    assert entry["platform"] == {"architecture": config["architecture"], "os": "linux"}
    # docker load's view of the same blobs
    [docker] = json.loads(files["manifest.json"])
    assert docker == {
        "Config": f"blobs/sha256/{manifest['config']['digest'][7:]}",
        "Layers": [f"blobs/sha256/{layer['digest'][7:]}"],
        "RepoTags": [ref],
    }
    return {"config": config, "layer": layer_bytes}


# -- the archive ---------------------------------------------------------------------------------------------


def test_the_same_directory_gives_the_same_bytes(rootfs: Path, tmp_path: Path) -> None:
    first = oci_archive(rootfs, tmp_path / "one.tar", REF, entrypoint=["/bin/busybox"], cmd=["echo", "hello"])
    for path in [rootfs, *rootfs.rglob("*")]:  # new mtimes and atimes: they must not show
        os.utime(path, (1_800_000_000, 1_800_000_000), follow_symlinks=False)
    second = oci_archive(rootfs, tmp_path / "two.tar", REF, entrypoint=["/bin/busybox"], cmd=["echo", "hello"])
    assert first.read_bytes() == second.read_bytes()
    third = oci_archive(rootfs, tmp_path / "three.tar", REF, entrypoint=["/bin/busybox"], cmd=["echo", "bye"])
    assert third.read_bytes() != first.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_digests_sizes_and_config_verify(rootfs: Path, tmp_path: Path) -> None:
    archive = oci_archive(
        rootfs, tmp_path / "image.tar", REF,
        entrypoint=["/bin/busybox"], cmd=["echo", "hello"], user="65532:65532",
        env={"LANG": "C.UTF-8"}, workdir="/home/nonroot", labels={"a": "b"},
    )  # fmt: skip
    checked = _verified(archive, REF)
    config = checked["config"]
    assert config["os"] == "linux" and config["created"] == "1970-01-01T00:00:00Z"
    assert config["config"] == {
        "Entrypoint": ["/bin/busybox"],
        "Cmd": ["echo", "hello"],
        "User": "65532:65532",
        "Env": [f"PATH={images.PATH}", "LANG=C.UTF-8"],
        "WorkingDir": "/home/nonroot",
        "Labels": {"a": "b"},
    }
    assert len(config["history"]) == 1


def test_the_layer_keeps_owners_modes_and_links(rootfs: Path, tmp_path: Path) -> None:
    members = _layer(_verified(oci_archive(rootfs, tmp_path / "image.tar", REF), REF)["layer"])
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/")), "entries are sorted, each directory before its contents"
    by_name = {m.name: m for m in members}
    assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in members)
    assert by_name["lib"].issym() and by_name["lib"].linkname == "usr/lib"
    assert not any(n.startswith("lib/") for n in names), "a link to a directory was followed"
    assert by_name["etc/hostname-link"].issym() and by_name["etc/hostname-link"].linkname == "/etc/hostname"
    assert by_name["bin/echo"].issym() and by_name["bin/echo"].linkname == "busybox"
    hard = {by_name["etc/data-hardlink"], by_name["usr/lib/data.txt"]}
    assert {m.type for m in hard} == {tarfile.LNKTYPE, tarfile.REGTYPE}, "one file, one link to it"
    assert (by_name["bin/busybox"].uid, by_name["bin/busybox"].gid, by_name["bin/busybox"].mode) == (0, 0, 0o755)
    assert (by_name["home/nonroot"].uid, by_name["home/nonroot"].gid) == (65532, 65532)
    assert (by_name["home/nonroot/owned"].uid, by_name["home/nonroot/owned"].gid) == (65532, 65532)
    assert by_name["bin/suid"].mode == 0o4755 and by_name["bin/suid"].uid == 0  # root's own set-uid file
    assert by_name["tmp"].mode == 0o1777 and by_name["empty"].isdir()


def test_a_set_uid_bit_of_a_remapped_owner_is_dropped() -> None:
    """Made by a user who is not root, that user's files become root's: their set-uid bit must not come along."""
    shared = Path(tempfile.mkdtemp(prefix="oci-uid-"))
    try:
        shared.chmod(0o755)
        root, out = shared / "rootfs", shared / "out"
        (root / "bin").mkdir(parents=True)
        (root / "bin/mine").write_bytes(b"#!/bin/sh\n")
        (root / "bin/roots").write_bytes(b"#!/bin/sh\n")
        (root / "bin/roots").chmod(0o4755)
        os.chown(root / "bin/mine", 1234, 1234)
        (root / "bin/mine").chmod(0o6755)  # chown clears the bits: set them after
        out.mkdir()
        os.chown(out, 1234, 1234)
        script = (
            "import os, sys; from pathlib import Path; from runbook_lab.images import oci_archive\n"
            "os.setgroups([]); os.setgid(1234); os.setuid(1234)\n"
            "oci_archive(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])\n"
        )
        command = [sys.executable, "-c", script, str(root), str(out / "x.tar"), REF]
        subprocess.run(command, capture_output=True, text=True, check=True)
        by_name = {m.name: m for m in _layer(_verified(out / "x.tar", REF)["layer"])}
        assert (by_name["bin/mine"].uid, by_name["bin/mine"].gid, by_name["bin/mine"].mode) == (0, 0, 0o755)
        assert (by_name["bin/roots"].uid, by_name["bin/roots"].mode) == (0, 0o4755)  # root's own: kept
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("pause:3.10", "docker.io/library/pause:3.10"),
        ("runbook-operator:0.1.0-abc", "docker.io/library/runbook-operator:0.1.0-abc"),
        ("someone/tool:1", "docker.io/someone/tool:1"),
        ("runbook-operator.local/pause:3.10", "runbook-operator.local/pause:3.10"),
        ("localhost/lab:1", "localhost/lab:1"),
        ("localhost:5000/lab:1", "localhost:5000/lab:1"),
    ],
)
def test_refs_are_named_as_containerd_and_the_kubelet_name_them(ref: str, full: str) -> None:
    assert normalize_ref(ref) == full


@pytest.mark.parametrize("ref", ["pause", "Pause:1", "pause@sha256:00", "pause:", "a/b:c/d"])
def test_a_ref_without_a_tag_or_with_capitals_is_refused(ref: str) -> None:
    with pytest.raises(ImageError):
        normalize_ref(ref)


def test_the_pause_image_is_a_static_binary_as_pause(tmp_path: Path) -> None:
    made = pause_image(BUSYBOX, tmp_path)
    assert made.ref == images.PAUSE_REF and made.archive.parent == tmp_path
    checked = _verified(made.archive, images.PAUSE_REF)
    assert checked["config"]["config"]["Entrypoint"] == ["/pause"]
    assert checked["config"]["config"]["User"] == "65535:65535"
    [member] = _layer(checked["layer"])
    assert (member.name, member.mode, member.size) == ("pause", 0o755, BUSYBOX.stat().st_size)
    assert pause_image(BUSYBOX, tmp_path) == made and images.pause_archive(BUSYBOX, tmp_path) == made.archive
    with pytest.raises(ImageError, match="not static"):
        pause_image(Path("/bin/ls"), tmp_path)


def test_the_lab_services_need_only_the_standard_library() -> None:
    """Import them with the lab's sources and the standard library only on the path (no site-packages)."""
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'lab')!r})\n"
        "import runbook_lab.ishchat, runbook_lab.demo, runbook_lab.kubelet, runbook_lab.workload\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] not in {*sys.stdlib_module_names, 'runbook_lab', '__main__'}))"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- in a containerd and a Docker engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_containerd() -> Iterator[Containerd]:
    with containerd(prefix="img-ctrd-") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def lab() -> Iterator[Image]:
    cache = Path(tempfile.mkdtemp(prefix="img-lab-"))
    try:
        yield lab_image(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_the_lab_image_is_cached_by_content(lab: Image) -> None:
    """Right after the build (an edit to the lab's sources in between would make a new key, rightly)."""
    assert lab_image(lab.archive.parent) == lab
    assert lab.ref.startswith(f"{images.LAB_REPOSITORY}:0.1.0-")


def test_imports_into_containerd_and_runs(rootfs: Path, tmp_path: Path, own_containerd: Containerd) -> None:
    archive = oci_archive(rootfs, tmp_path / "image.tar", REF, entrypoint=["/bin/busybox"], cmd=["echo", "hello"])
    own_containerd.ctr("images", "import", str(archive))
    assert normalize_ref(REF) in own_containerd.ctr("images", "ls", "--quiet").stdout.split()
    ran = own_containerd.ctr("run", "--rm", normalize_ref(REF), "oci-test-echo")
    assert ran.stdout == "hello\n"
    own_containerd.ctr("images", "rm", normalize_ref(REF))


def test_the_lab_image_runs_ishchat_in_containerd(lab: Image, own_containerd: Containerd) -> None:
    own_containerd.ctr("images", "import", str(lab.archive), timeout=300)
    assert lab.ref in own_containerd.ctr("images", "ls", "--quiet").stdout.split()
    ran = own_containerd.ctr("run", "--rm", "--read-only", lab.ref, "oci-test-lab", "python3", "-c", ISHCHAT_SMOKE)
    assert json.loads(ran.stdout) == {"answers": [200], "foreign": []}
    user = own_containerd.ctr("run", "--rm", lab.ref, "oci-test-lab-id", "id", "-u").stdout
    assert user.strip() == "65532"
    found = (
        "import importlib.util as u; print([m for m in ('httpx', 'kubernetes', 'redis', 'runbook_operator', "
        "'pydantic_core', 'psycopg_binary') if u.find_spec(m)])"
    )
    ran = own_containerd.ctr("run", "--rm", "--read-only", lab.ref, "oci-test-lab-deps", "python3", "-c", found)
    assert ran.stdout.strip() == "['httpx', 'kubernetes', 'redis', 'runbook_operator']"  # pure Python only


def test_docker_loads_the_same_archive(lab: Image, docker_cli: DockerCli) -> None:
    docker_cli("load", "--input", str(lab.archive), timeout=300)
    try:
        out = docker_cli("run", "--rm", "--read-only", "--network", "none", lab.ref, "python3", "-c", ISHCHAT_SMOKE)
        assert json.loads(out.stdout) == {"answers": [200], "foreign": []}
        config = json.loads(docker_cli("image", "inspect", lab.ref).stdout)[0]["Config"]
        assert config["User"] == "65532:65532" and config["Cmd"] == ["python3"]
    finally:
        docker_cli("rmi", "-f", lab.ref, check=False)
