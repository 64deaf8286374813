"""The image admin channel and the `ctr` / `containerd` stand-ins: requests reach a running
image service over its socket (the archive passed as a descriptor, stdin included) and see its
state at once; without a daemon the command works on the store itself; kind's exact argument
lists work and anything else is refused with a message saying what the stand-in is."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tarfile
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cri_py import ctr
from cri_py.config import Config
from cri_py.errors import FailedPrecondition, NotFound
from cri_py.images import commands
from cri_py.images.admin import ImportRequest, call, socket_path
from cri_py.images.importer import ImportOptions
from cri_py.images.manifest import Platform
from cri_py.images.service import ImageService
from cri_py.server.admin import AdminServer

from .archives import docker_archive, oci_layout
from .fakes import file, make_image, make_layer, simple_image

# kind v0.33.0, pkg/cluster/nodeutils/util.go: LoadImageArchive and ReTagImage.
KIND_IMPORT = [
    "--namespace=k8s.io",
    "images",
    "import",
    "--all-platforms",
    "--digests",
    "--snapshotter=overlayfs",
    "-",
]
TODAY = commands.today()


@dataclass
class Daemon:
    """An image service with its admin socket and run-dir lock, as `cri-py serve` has them."""

    config: Config
    config_file: Path
    service: ImageService


def write_config(base: Path) -> tuple[Config, Path]:
    config = Config(root_dir=str(base / "root"), run_dir=str(base / "run"))
    path = base / "config.yaml"
    base.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"root_dir": config.root_dir, "run_dir": config.run_dir}))
    return config, path


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config, path = write_config(tmp_path / "daemon")
    service = ImageService(config, platform=Platform("linux", "amd64"))
    server = AdminServer(socket_path(config.run_dir), service, asyncio.get_running_loop())
    with commands.store_lock(Path(config.run_dir)) as free:
        assert free  # held from here on, as the daemon holds it
        server.start()
        try:
            yield Daemon(config, path, service)
        finally:
            await asyncio.to_thread(server.close)
            await service.close()


@pytest.fixture
def archive_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "images.tar"
    yield path


def run_ctr(argv: list[str], stdin: Path | None, config_file: Path) -> int:
    """The stand-in as kind runs it (in a thread: the daemon's loop is the test's)."""
    saved = sys.stdin
    env = os.environ.get("CRI_PY_CONFIG")
    os.environ["CRI_PY_CONFIG"] = str(config_file)
    try:
        if stdin is not None:
            sys.stdin = stdin.open("rb")  # type: ignore[assignment]
        return ctr.main(argv)
    finally:
        if stdin is not None:
            sys.stdin.close()
        sys.stdin = saved
        if env is None:
            del os.environ["CRI_PY_CONFIG"]
        else:
            os.environ["CRI_PY_CONFIG"] = env


async def test_kind_load_through_the_running_daemon(
    daemon: Daemon, archive_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image([make_layer([file("hello", b"loaded")], "none")], docker=True)
    archive_file.write_bytes(
        docker_archive([(image, ["kind.test/app:1"])], share_links=False).build()
    )
    status = await asyncio.to_thread(run_ctr, KIND_IMPORT, archive_file, daemon.config_file)
    assert status == 0, capsys.readouterr().err
    # Seen at once by the daemon's own state: ImageStatus, ListImages.
    view = daemon.service.status(image.id)
    assert view is not None and view.repo_tags == ("kind.test/app:1",)
    (digest,) = view.repo_digests
    assert digest.startswith(f"docker.io/library/import-{TODAY}@sha256:")
    out = capsys.readouterr().out
    assert "unpacking kind.test/app:1 (sha256:" in out and out.count("...done") == 2
    # ReTagImage, with the ID `docker image inspect` gives.
    retag = ["--namespace=k8s.io", "images", "tag", "--force", image.id, "kind.test/app:2"]
    assert await asyncio.to_thread(run_ctr, retag, None, daemon.config_file) == 0
    assert daemon.service.status("kind.test/app:2") is not None
    listing = ["-n", "k8s.io", "images", "list", "-q"]
    capsys.readouterr()
    assert await asyncio.to_thread(run_ctr, listing, None, daemon.config_file) == 0
    assert "kind.test/app:2\n" in capsys.readouterr().out


async def test_a_hostile_archive_through_the_daemon_changes_nothing(
    daemon: Daemon, archive_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = make_image([make_layer([file("../../../etc/evil", b"x")], "none")], docker=True)
    archive_file.write_bytes(docker_archive([(evil, ["evil:1"])], share_links=False).build())
    status = await asyncio.to_thread(run_ctr, KIND_IMPORT, archive_file, daemon.config_file)
    assert status == 1
    assert "rejected" in capsys.readouterr().err
    assert daemon.service.list_images() == []
    images = Path(daemon.config.root_dir) / "images"
    assert not any((images / "ingest").iterdir()) and not any((images / "layers").iterdir())


async def test_errors_come_back_as_the_same_kind(daemon: Daemon, tmp_path: Path) -> None:
    def tag_missing() -> str:
        return commands.tag_image(daemon.config, "nothing:1", "x:1", force=True)

    with pytest.raises(NotFound, match="nothing:1 not present"):
        await asyncio.to_thread(tag_missing)
    not_a_tar = tmp_path / "x"
    not_a_tar.write_bytes(b"hello")

    def load() -> object:
        fd = os.open(not_a_tar, os.O_RDONLY)
        try:
            return commands.import_images(daemon.config, fd, ImportOptions(TODAY))
        finally:
            os.close(fd)

    with pytest.raises(FailedPrecondition, match=r"not a valid tar|not an image archive"):
        await asyncio.to_thread(load)
    # An import without its descriptor is refused by the daemon, not half-done.
    with pytest.raises(Exception, match="expected 1 descriptor"):
        await asyncio.to_thread(call, socket_path(daemon.config.run_dir), ImportRequest(TODAY))


async def test_export_through_the_daemon_writes_a_pipe(daemon: Daemon) -> None:
    image = simple_image("piped")
    await daemon.service.import_archive(
        io.BytesIO(oci_layout([(image, "reg.test/piped:1", "")]).build()), ImportOptions(TODAY)
    )
    read_end, write_end = os.pipe()

    def export() -> None:
        try:
            commands.export_images(daemon.config, ("reg.test/piped:1",), write_end)
        finally:
            os.close(write_end)

    def drain() -> bytes:
        with open(read_end, "rb") as pipe:
            return pipe.read()

    data, _ = await asyncio.gather(asyncio.to_thread(drain), asyncio.to_thread(export))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "reg.test/piped:1"
    assert entry["digest"] == image.digest


def test_without_a_daemon_the_command_works_on_the_store(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path / "offline")
    image = simple_image("offline")
    archive = tmp_path / "a.tar"
    archive.write_bytes(oci_layout([(image, "reg.test/offline:1", "")]).build())
    fd = os.open(archive, os.O_RDONLY)
    try:
        imported = commands.import_images(config, fd, ImportOptions(TODAY, digests=True))
    finally:
        os.close(fd)
    assert {i.name for i in imported} == {
        "reg.test/offline:1",
        f"import-{TODAY}@{image.digest}",
    }
    assert commands.image_names(config) == (
        f"docker.io/library/import-{TODAY}@{image.digest}",
        "reg.test/offline:1",
    )
    # What a daemon starting later reads.
    metadata = json.loads((Path(config.root_dir) / "images" / "images.json").read_text())
    assert list(metadata["images"]) == [image.id]


# --- the stand-ins' arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["images", "import", "-"], "pass --namespace=k8s.io"),
        (["--namespace=default", "images", "import", "-"], "namespace 'default'"),
        (["--address", "/x", "images", "ls"], "global flag '--address'"),
        (["-n", "k8s.io", "images", "pull", "docker.io/x:1"], "`images pull` is not supported"),
        (["-n", "k8s.io", "containers", "ls"], "command 'containers' is not supported"),
        (["-n", "k8s.io", "images", "import", "--snapshotter=zfs", "-"], "overlayfs only"),
        (["-n", "k8s.io", "images", "import", "--base-name=x", "-"], "'--base-name=x' is not"),
        (["-n", "k8s.io", "images", "import"], "takes one FILE"),
        (["-n", "k8s.io", "images", "tag", "a"], "SOURCE and at least one TARGET"),
    ],
)
def test_the_ctr_stand_in_refuses_what_it_does_not_do(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctr.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "cri-py's stand-in for containerd's ctr" in err


def test_containerd_config_dump_names_the_snapshotter_kind_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ctr.containerd_main(["config", "dump"]) == 0
    # kind v0.33.0 parseSnapshotter: version 3 -> plugins."io.containerd.cri.v1.images".snapshotter
    dump = tomllib.loads(capsys.readouterr().out)
    assert dump["version"] == 3
    assert dump["plugins"]["io.containerd.cri.v1.images"]["snapshotter"] == ctr.SNAPSHOTTER
    assert ctr.containerd_main(["config", "default"]) == 1
    assert "this node runs cri-py, not containerd" in capsys.readouterr().err
