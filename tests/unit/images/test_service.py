"""The image service end to end against fake registries: pull, status by every kind of name,
list, remove with garbage collection, single-flight pulls, crash recovery, leases, disk usage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cri_py.config import Config, ImagesConfig, RegistryHost
from cri_py.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cri_py.images.endpoints import Credentials
from cri_py.images.manifest import Platform
from cri_py.images.service import ImageService
from cri_py.linux import malloc

from .fakes import (
    Image,
    Network,
    Registry,
    directory,
    file,
    make_image,
    make_index,
    make_layer,
    simple_image,
    symlink,
)

HOST = "registry.test"
MIRROR = "127.0.0.1:5000"
AMD64 = Platform("linux", "amd64")


def make_config(root: Path, **images: object) -> Config:
    return Config(
        root_dir=str(root),
        images=ImagesConfig(**images),  # type: ignore[arg-type]
        registries={
            HOST: RegistryHost(mirrors=(f"http://{MIRROR}/{HOST}",)),
            "docker.io": RegistryHost(mirrors=(f"http://{MIRROR}/docker.io",)),
        },
    )


class Lab:
    """A mirror registry, a service over a temp root, and helpers to push and inspect."""

    def __init__(self, root: Path, **images: object) -> None:
        self.root = root
        self.mirror = Registry(MIRROR)
        self.network = Network(self.mirror)
        self.images_config = images
        self.service = self.start()

    def start(self) -> ImageService:
        config = make_config(self.root, **self.images_config)
        return ImageService(config, transport=self.network.transport(), platform=AMD64)

    def push(self, name: str, tag: str, image: Image) -> None:
        self.mirror.push(name, tag, image)

    def blob_files(self) -> set[str]:
        base = self.root / "images" / "blobs"
        return {f"{d.name}/{p.name}" for d in base.iterdir() for p in d.iterdir()}

    def layer_dirs(self) -> set[str]:
        return {p.name for p in (self.root / "images" / "layers").iterdir()}


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path / "root", pinned=(f"{HOST}/pause:3.10",))
    yield lab
    await lab.service.close()


APP = f"{HOST}/team/app"


async def test_pull_returns_the_config_digest_and_status_answers_every_name(lab: Lab) -> None:
    image = simple_image(user="1002:users")
    lab.push(f"{HOST}/team/app", "v1", image)
    image_id = await lab.service.pull(f"{APP}:v1")
    assert image_id == image.id
    view = lab.service.status(image_id)
    assert view is not None
    assert view.repo_tags == (f"{APP}:v1",)
    assert view.repo_digests == (f"{APP}@{image.digest}",)
    assert view.size == len(image.config) + sum(len(layer.blob) for layer in image.layers)
    assert (view.uid, view.username, view.pinned) == (1002, "", False)
    for name in (
        image_id,
        image_id.removeprefix("sha256:"),
        image_id[7:19],  # a short ID, as `crictl images` prints it
        f"{APP}:v1",
        f"{APP}@{image.digest}",
        f"{APP}:other@{image.digest}",
    ):
        assert lab.service.status(name) == view, name
    assert lab.service.status(f"{APP}:v2") is None
    assert lab.service.status(f"{APP}") is None  # :latest was not pulled
    assert lab.service.status("Not/A:Valid:Ref") is None


async def test_short_names_normalise_to_docker_hub(lab: Lab) -> None:
    image = simple_image(user="www-data")
    lab.push("docker.io/library/busybox", "latest", image)
    image_id = await lab.service.pull("busybox")
    view = lab.service.status("busybox")
    assert view is not None and view.id == image_id
    assert view.repo_tags == ("docker.io/library/busybox:latest",)
    assert (view.uid, view.username) == (None, "www-data")
    assert lab.service.status("docker.io/library/busybox:latest") == view
    assert lab.service.status("library/busybox") == view


async def test_pull_by_digest_records_the_digest_and_no_tag(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    await lab.service.pull(f"{APP}@{image.digest}")
    view = lab.service.status(f"{APP}@{image.digest}")
    assert view is not None
    assert (view.repo_tags, view.repo_digests) == ((), (f"{APP}@{image.digest}",))


async def test_pulling_malformed_reference_is_invalid_argument(lab: Lab) -> None:
    with pytest.raises(InvalidArgument):
        await lab.service.pull("Busybox")


async def test_pulling_a_missing_image_names_what_each_endpoint_said(lab: Lab) -> None:
    with pytest.raises(Unavailable, match=r"127.0.0.1:5000/registry.test: .* not found \(404\)"):
        await lab.service.pull(f"{APP}:missing")
    assert lab.service.list_images() == []


async def test_tags_of_one_image_and_a_tag_that_moves(lab: Lab) -> None:
    first, second = simple_image("1"), simple_image("2")
    for tag in ("1", "2", "3"):
        lab.push(f"{HOST}/team/app", tag, first)
    ids = {await lab.service.pull(f"{APP}:{tag}") for tag in ("1", "2", "3")}
    assert ids == {first.id}
    (view,) = lab.service.list_images()
    assert view.repo_tags == (f"{APP}:1", f"{APP}:2", f"{APP}:3")
    lab.push(f"{HOST}/team/app", "3", second)
    await lab.service.pull(f"{APP}:3")
    by_id = {v.id: v for v in lab.service.list_images()}
    assert by_id[first.id].repo_tags == (f"{APP}:1", f"{APP}:2")
    assert by_id[second.id].repo_tags == (f"{APP}:3",)


async def test_same_image_from_two_registries_has_one_id(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    lab.push("docker.io/team/app", "v1", image)
    assert await lab.service.pull(f"{APP}:v1") == await lab.service.pull("team/app:v1")
    (view,) = lab.service.list_images()
    assert view.repo_tags == ("docker.io/team/app:v1", f"{APP}:v1")
    await lab.service.remove("team/app:v1")  # by one registry's name: both names go
    assert lab.service.list_images() == []
    assert lab.service.status(f"{APP}:v1") is None


async def test_list_filter(lab: Lab) -> None:
    a, b = simple_image("a"), simple_image("b")
    lab.push(f"{HOST}/team/app", "a", a)
    lab.push(f"{HOST}/team/app", "b", b)
    lab.push(f"{HOST}/team/other", "a", a)
    for name in (f"{APP}:a", f"{APP}:b", f"{HOST}/team/other:a"):
        await lab.service.pull(name)
    assert {v.id for v in lab.service.list_images()} == {a.id, b.id}
    assert [v.id for v in lab.service.list_images(f"{APP}:b")] == [b.id]
    assert {v.id for v in lab.service.list_images(APP)} == {a.id, b.id}
    assert [v.id for v in lab.service.list_images(f"{HOST}/team/other")] == [a.id]
    assert [v.id for v in lab.service.list_images(b.id)] == [b.id]
    assert lab.service.list_images(f"{APP}:zzz") == []
    assert lab.service.list_images("NOT VALID") == []


async def test_index_pull_selects_the_host_platform(lab: Lab) -> None:
    arm = simple_image("arm")
    amd = simple_image("amd")
    index = make_index([(Platform("linux", "arm64", "v8"), arm), (AMD64, amd)], docker=True)
    digest = lab.mirror.push_index(f"{HOST}/team/app", "multi", index, [arm, amd])
    assert await lab.service.pull(f"{APP}:multi") == amd.id
    view = lab.service.status(f"{APP}:multi")
    assert view is not None and view.repo_digests == (f"{APP}@{digest}",)
    assert lab.service.status(f"{APP}@{digest}") == view
    assert lab.mirror.blob_gets[arm.id] == lab.mirror.blob_gets[arm.layers[1].digest] == 0
    info = json.loads(lab.service.verbose_info(amd.id)["info"])
    assert info["manifestDigest"] == amd.digest


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
async def test_layers_of_every_compression_are_unpacked(lab: Lab, compression: str) -> None:
    image = simple_image(compression=compression)
    lab.push(f"{HOST}/team/app", "v1", image)
    rootfs = lab.service.rootfs(await lab.service.pull(f"{APP}:v1"))
    assert (rootfs.layers[0] / "bin/sh").read_bytes() == b"#!shell\n"
    assert (rootfs.layers[1] / "hello.txt").read_text() == "hello "


async def test_rootfs_gives_layers_lowest_first_and_the_runtime_config(lab: Lab) -> None:
    base = make_layer([file("etc/a", b"a"), directory("var/cache"), file("var/cache/old")])
    top = make_layer([file("etc/.wh.a"), file("var/cache/.wh..wh..opq"), file("etc/b", b"b")])
    image = make_image([base, top], user="app", cmd=("run",))
    lab.push(f"{HOST}/team/app", "v1", image)
    image_id = await lab.service.pull(f"{APP}:v1")
    rootfs = lab.service.rootfs(f"{APP}:v1")
    assert rootfs.image_id == image_id
    assert [p.parent for p in rootfs.layers] == [lab.root / "images" / "layers"] * 2
    assert (rootfs.layers[0] / "etc/a").exists() and (rootfs.layers[1] / "etc/b").exists()
    assert rootfs.config.cmd == ("run",) and rootfs.config.user == "app"
    assert rootfs.config.env == ("PATH=/bin",) and rootfs.config.exposed_ports == ("80/tcp",)
    with pytest.raises(NotFound, match="not present; pull it first"):
        lab.service.rootfs(f"{APP}:v2")


async def test_ten_concurrent_pulls_download_each_blob_once(lab: Lab) -> None:
    image = make_image(
        [make_layer([file(f"layer{i}/data", bytes([i]) * 20_000)]) for i in range(5)]
    )
    lab.push(f"{HOST}/team/app", "v1", image)
    lab.mirror.chunk_delay = 0.001  # keep the downloads in flight while the others arrive
    ids = await asyncio.gather(*(lab.service.pull(f"{APP}:v1") for _ in range(10)))
    assert set(ids) == {image.id}
    assert dict(lab.mirror.blob_gets) == dict.fromkeys(image.blobs, 1)
    manifest_gets = [r for r in lab.mirror.requests if "/manifests/" in r.url.path]
    assert len(manifest_gets) == 1


async def test_pulls_of_two_tags_share_blob_downloads(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "a", image)
    lab.push(f"{HOST}/team/app", "b", image)
    lab.mirror.chunk_delay = 0.001
    await asyncio.gather(lab.service.pull(f"{APP}:a"), lab.service.pull(f"{APP}:b"))
    assert dict(lab.mirror.blob_gets) == dict.fromkeys(image.blobs, 1)


async def test_remove_by_any_name_removes_all_tags_and_collects_garbage(lab: Lab) -> None:
    shared = make_layer([file("shared", b"s")])
    one = make_image([shared, make_layer([file("one")])])
    two = make_image([shared, make_layer([file("two")])])
    lab.push(f"{HOST}/team/app", "one", one)
    lab.push(f"{HOST}/team/app", "also-one", one)
    lab.push(f"{HOST}/team/app", "two", two)
    for tag in ("one", "also-one", "two"):
        await lab.service.pull(f"{APP}:{tag}")
    usage_before = lab.service.fs_usage()
    layers_before = lab.layer_dirs()
    await lab.service.remove(f"{APP}:also-one")
    assert lab.service.status(f"{APP}:one") is None
    assert lab.service.status(one.id) is None
    assert [v.id for v in lab.service.list_images()] == [two.id]
    remaining = lab.service.rootfs(two.id)
    assert {p.name for p in remaining.layers} == set(lab.layer_dirs())
    assert len(layers_before) == 3
    blobs = {f"sha256/{d[7:]}" for d in two.blobs} | {f"sha256/{two.digest[7:]}"}
    assert lab.blob_files() == blobs
    usage = lab.service.fs_usage()
    assert usage.used_bytes < usage_before.used_bytes
    assert usage.inodes_used < usage_before.inodes_used
    await lab.service.remove(one.id)  # idempotent
    await lab.service.remove("never/pulled:x")
    await lab.service.remove("NOT VALID")
    await asyncio.gather(*(lab.service.remove(two.id) for _ in range(5)))
    assert lab.service.list_images() == []
    assert lab.blob_files() == set() and lab.layer_dirs() == set()
    assert lab.service.fs_usage().used_bytes == 0


async def test_pinned_images_report_pinned_and_can_still_be_removed(lab: Lab) -> None:
    pause = simple_image("pause")
    lab.push(f"{HOST}/pause", "3.10", pause)
    await lab.service.pull(f"{HOST}/pause:3.10")
    view = lab.service.status(f"{HOST}/pause:3.10")
    assert view is not None and view.pinned
    await lab.service.remove(f"{HOST}/pause:3.10")
    assert lab.service.status(pause.id) is None


async def test_verbose_info_has_manifest_and_config(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    image_id = await lab.service.pull(f"{APP}:v1")
    info = json.loads(lab.service.verbose_info(image_id)["info"])
    assert info["manifest"] == json.loads(image.manifest)
    assert info["config"] == json.loads(image.config) == info["imageSpec"]
    assert info["chainID"] == info["layers"][-1]["chainID"]
    assert lab.service.verbose_info("sha256:" + "0" * 64) == {}


async def test_fs_usage_counts_blobs_and_layers(lab: Lab) -> None:
    empty = lab.service.fs_usage()
    assert (empty.used_bytes, empty.inodes_used) == (0, 0)
    assert empty.mountpoint == str(lab.root / "images") and empty.timestamp_ns > 0
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    await lab.service.pull(f"{APP}:v1")
    usage = lab.service.fs_usage()
    blob_bytes = sum(len(b) for b in image.blobs.values()) + len(image.manifest)
    assert usage.used_bytes > blob_bytes
    assert usage.inodes_used >= len(image.blobs) + 1 + 5


async def test_images_survive_a_restart(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    image_id = await lab.service.pull(f"{APP}:v1")
    before = lab.service.status(image_id)
    await lab.service.close()
    lab.service = lab.start()
    assert lab.service.status(f"{APP}:v1") == before
    assert lab.service.fs_usage().used_bytes > 0
    assert (lab.service.rootfs(image_id).layers[1] / "hello.txt").exists()


async def test_restart_after_a_crash_mid_pull_drops_the_leftovers(lab: Lab) -> None:
    kept = simple_image("kept")
    lab.push(f"{HOST}/team/app", "kept", kept)
    await lab.service.pull(f"{APP}:kept")
    images = lab.root / "images"
    # What a kill -9 in the middle of another pull can leave behind:
    (images / "ingest" / "abc-123").write_bytes(b"partial")
    (images / "layers" / ".tmp-deadbeef-1234" / "etc").mkdir(parents=True)
    orphan = "sha256:" + "ab" * 32
    (images / "blobs" / "sha256" / orphan[7:]).write_bytes(b"verified but unreferenced")
    (images / "layers" / ("cd" * 32)).mkdir()
    (images / "images.json.tmp-999").write_bytes(b"{torn")
    await lab.service.close()
    lab.service = lab.start()
    assert list((images / "ingest").iterdir()) == []
    assert {p.name for p in (images / "layers").iterdir()} == {
        p.name for p in lab.service.rootfs(kept.id).layers
    }
    assert not (images / "blobs" / "sha256" / orphan[7:]).exists()
    assert lab.service.status(f"{APP}:kept") is not None


async def test_a_cancelled_pull_leaves_nothing_visible(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    started = asyncio.Event()

    async def block(digest: str) -> None:
        started.set()
        await asyncio.sleep(3600)

    lab.mirror.on_blob = block
    pull = asyncio.create_task(lab.service.pull(f"{APP}:v1"))
    await asyncio.wait_for(started.wait(), 5)
    pull.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pull
    assert lab.service.list_images() == []
    await asyncio.sleep(0)
    assert list((lab.root / "images" / "ingest").iterdir()) == []
    lab.mirror.on_blob = None
    assert await lab.service.pull(f"{APP}:v1") == image.id


async def test_one_waiter_giving_up_does_not_cancel_the_shared_pull(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    lab.mirror.chunk_delay = 0.01
    impatient = asyncio.create_task(lab.service.pull(f"{APP}:v1"))
    patient = asyncio.create_task(lab.service.pull(f"{APP}:v1"))
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert await patient == image.id


async def test_a_hostile_layer_fails_the_pull_and_leaves_nothing(lab: Lab) -> None:
    evil = make_layer([symlink("etc", "/etc"), file("etc/evil", b"x")])
    image = make_image([make_layer([file("ok")]), evil])
    lab.push(f"{HOST}/team/app", "evil", image)
    with pytest.raises(FailedPrecondition, match="parent etc is a symlink"):
        await lab.service.pull(f"{APP}:evil")
    assert lab.service.list_images() == []
    assert not Path("/etc/evil").exists()
    assert not any(p.name.startswith(".tmp-") for p in (lab.root / "images/layers").iterdir())


async def test_a_layer_over_the_configured_limits_fails_the_pull_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path / "root", max_layer_bytes=1 << 20, max_layer_inodes=50)
    bomb = make_image([make_layer([file("ok")]), make_layer([file("zeros", bytes(4 << 20))])])
    many = make_image([make_layer([file(f"f{i}") for i in range(60)])])
    lab.push(f"{HOST}/team/app", "bomb", bomb)
    lab.push(f"{HOST}/team/app", "many", many)
    with pytest.raises(FailedPrecondition, match="too large: more than 1048576 bytes"):
        await lab.service.pull(f"{APP}:bomb")
    with pytest.raises(FailedPrecondition, match="too large: more than 50 files"):
        await lab.service.pull(f"{APP}:many")
    assert lab.service.list_images() == []
    layers = lab.root / "images/layers"
    assert not any(p.name.startswith(".tmp-") for p in layers.iterdir())
    # Only the bomb image's first, valid layer is kept (cached, as any layer a failed pull
    # finished); nothing of the layers over the limits.
    ok_layer = bomb.layers[0].diff_id  # chain ID of a bottom layer = its diff ID
    assert lab.layer_dirs() == {ok_layer.removeprefix("sha256:")}
    await lab.service.close()


async def test_a_tampered_blob_fails_the_pull(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    lab.mirror.tamper[image.layers[0].digest] = bytes(len(image.layers[0].blob))
    with pytest.raises(FailedPrecondition, match="blob digest mismatch"):
        await lab.service.pull(f"{APP}:v1")
    assert lab.service.list_images() == []
    assert not any((lab.root / "images/layers").iterdir())


async def test_leased_layers_outlive_their_image(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    await lab.service.pull(f"{APP}:v1")
    rootfs = await lab.service.lease_layers("container-1", f"{APP}:v1")
    await lab.service.remove(image.id)
    assert lab.service.status(image.id) is None
    assert all(layer.is_dir() for layer in rootfs.layers)
    await lab.service.close()
    lab.service = lab.start()  # leases are persisted
    assert all(layer.is_dir() for layer in rootfs.layers)
    await lab.service.release_layers("container-1")
    await lab.service.release_layers("container-1")
    assert not any(layer.exists() for layer in rootfs.layers)


async def test_a_lease_holds_before_its_write_ends_and_is_on_disk_after(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CreateContainer prepares the container while images.json is written: the layers must
    # stay if the image is removed meanwhile, and the lease must be on disk once written.
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    await lab.service.pull(f"{APP}:v1")
    gate = threading.Event()
    real_save = lab.service._store.save

    def slow_save(state: Any) -> None:
        gate.wait(10)
        real_save(state)

    monkeypatch.setattr(lab.service._store, "save", slow_save)
    rootfs, written = await lab.service.lease_soon("container-1", f"{APP}:v1")
    assert not written.done()
    removal = asyncio.ensure_future(lab.service.remove(image.id))
    await asyncio.sleep(0.05)
    gate.set()
    await removal
    written.result(10)
    assert all(layer.is_dir() for layer in rootfs.layers)
    await lab.service.close()
    lab.service = lab.start()
    assert all(layer.is_dir() for layer in rootfs.layers)  # the lease was written
    await lab.service.release_layers("container-1")
    assert not any(layer.exists() for layer in rootfs.layers)


async def test_a_release_scans_for_garbage_only_when_it_can_have_made_some(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan lists every blob and layer on disk: RemoveContainer paid it each time.
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    await lab.service.pull(f"{APP}:v1")
    rootfs = await lab.service.lease_layers("container-1", f"{APP}:v1")
    await lab.service.lease_layers("container-2", f"{APP}:v1")
    scans: list[int] = []
    real = lab.service._store.move_garbage_to_trash

    def counted(*kept: object) -> int:
        scans.append(1)
        return real(*kept)  # type: ignore[arg-type]

    monkeypatch.setattr(lab.service._store, "move_garbage_to_trash", counted)
    await lab.service.release_layers("container-1")  # the image keeps the layers
    assert scans == [] and all(layer.is_dir() for layer in rootfs.layers)
    await lab.service.remove(image.id)  # container-2 keeps them now
    assert all(layer.is_dir() for layer in rootfs.layers)
    scans.clear()
    await lab.service.release_layers("container-2")  # the last keeper: collected
    assert scans == [1] and not any(layer.exists() for layer in rootfs.layers)


async def test_credentials_reach_a_registry_that_wants_them(tmp_path: Path) -> None:
    registry = Registry(HOST, auth="bearer", users={"alice": "pw"})
    image = simple_image()
    registry.push("team/app", "v1", image)
    network = Network(registry)
    service = ImageService(
        Config(root_dir=str(tmp_path)), transport=network.transport(), platform=AMD64
    )
    with pytest.raises(FailedPrecondition, match="refused"):
        await service.pull(f"{APP}:v1")
    assert await service.pull(f"{APP}:v1", Credentials.create("alice", "pw")) == image.id
    await service.close()


async def test_pull_logs_progress_per_layer(
    lab: Lab, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("cri_py"), "propagate", True)  # log.setup() clears it
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    with caplog.at_level(logging.INFO, logger="cri_py.images"):
        await lab.service.pull(f"{APP}:v1")
    downloaded = [r for r in caplog.records if r.getMessage() == "layer downloaded"]
    assert len(downloaded) == len(image.layers)
    fields = downloaded[0].fields  # type: ignore[attr-defined]
    assert {"bytes", "rate_mib_s", "seconds", "digest"} <= set(fields)
    assert any(r.getMessage() == "pulled image" for r in caplog.records)


async def test_pull_hooks_see_the_blob_bytes_received_and_each_pull(lab: Lab) -> None:
    image = simple_image()
    lab.push(f"{HOST}/team/app", "v1", image)
    received: list[int] = []
    pulled: list[float] = []
    lab.service.on_downloaded = received.append
    lab.service.on_pulled = pulled.append
    await lab.service.pull(f"{APP}:v1")
    assert sum(received) == len(image.config) + sum(len(layer.blob) for layer in image.layers)
    assert len(pulled) == 1 and pulled[0] >= 0
    await lab.service.pull(f"{APP}:v1")  # everything is here: nothing more received
    assert sum(received) == len(image.config) + sum(len(layer.blob) for layer in image.layers)
    assert len(pulled) == 2


async def test_new_registries_and_pinned_images_apply_to_what_follows(tmp_path: Path) -> None:
    mirror = Registry(MIRROR)
    image = simple_image()
    mirror.push(f"{HOST}/team/app", "v1", image)
    service = ImageService(
        Config(root_dir=str(tmp_path)), transport=Network(mirror).transport(), platform=AMD64
    )
    with pytest.raises(Unavailable):
        await service.pull(f"{APP}:v1")  # no mirror configured: the host itself refuses
    service.set_registries({HOST: RegistryHost(mirrors=(f"http://{MIRROR}/{HOST}",))})
    assert await service.pull(f"{APP}:v1") == image.id
    view = service.status(image.id)
    assert view is not None and not view.pinned
    service.set_pinned([f"{APP}:v1"])
    view = service.status(image.id)
    assert view is not None and view.pinned
    await service.close()


async def test_release_layers_from_threads_of_a_busy_default_pool_does_not_deadlock(
    lab: Lab,
) -> None:
    # Found by tests/integration/test_concurrency.py: RemovePodSandbox runs on the default
    # pool and waits for release_layers, whose store write needed a thread of that same pool.
    lab.push(f"{HOST}/team/app", "v1", simple_image())
    await lab.service.pull(f"{APP}:v1")
    owners = [f"container-{i}" for i in range(4)]
    for owner in owners:
        await lab.service.lease_layers(owner, f"{APP}:v1")
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(2))

    def release(owner: str) -> None:
        asyncio.run_coroutine_threadsafe(lab.service.release_layers(owner), loop).result(10)

    await asyncio.wait_for(
        asyncio.gather(*(asyncio.to_thread(release, owner) for owner in owners)), 20
    )
    assert lab.service.lease_owners() == set()


async def test_the_heap_is_trimmed_once_the_last_running_pull_ends(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pulls' freed buffers go back to the kernel after the last pull (a failed one too),
    not while others still run."""
    trims: list[int] = []
    monkeypatch.setattr(malloc, "trim", lambda: trims.append(1) or True)

    async def trims_so_far() -> int:  # the trim runs on the store's thread, after the pull
        await asyncio.wrap_future(lab.service._store_io.submit(lambda: None))
        return len(trims)

    image = make_image([make_layer([file(f"data{i}", bytes([i]) * 20_000)]) for i in range(3)])
    lab.push(f"{HOST}/team/app", "v1", image)
    lab.mirror.chunk_delay = 0.001  # the pulls overlap
    results = await asyncio.gather(
        *(lab.service.pull(f"{APP}:v1") for _ in range(5)),
        lab.service.pull(f"{APP}:missing"),
        return_exceptions=True,
    )
    assert results[:5] == [image.id] * 5 and isinstance(results[5], Unavailable)
    assert await trims_so_far() == 1
    with pytest.raises(Unavailable):
        await lab.service.pull(f"{APP}:missing")
    assert await trims_so_far() == 2
