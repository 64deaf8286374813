"""`cri-py images import/export` and `ctr images tag` through the image service: archives built
in the test, honest and hostile, into a store in a temp dir; every failure leaves the store as
it was (no image, blob, layer or staged file)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cri_py.config import Config, ImagesConfig
from cri_py.errors import AlreadyExists, FailedPrecondition, NotFound
from cri_py.images import manifest as m
from cri_py.images.archive import ArchiveEntry
from cri_py.images.importer import ImportedImage, ImportOptions, entry_names
from cri_py.images.service import ImageService

from .archives import Tar, blob_name, docker_archive, index_entry, oci_layout
from .fakes import (
    Image,
    directory,
    file,
    make_image,
    make_index,
    make_layer,
    sha256,
    simple_image,
    symlink,
)

AMD64 = m.Platform("linux", "amd64")
TODAY = "2026-12-03"
OPTIONS = ImportOptions(date=TODAY)


class Store:
    def __init__(self, root: Path, **images: object) -> None:
        self.root = root
        config = Config(root_dir=str(root), images=ImagesConfig(**images))  # type: ignore[arg-type]
        self.service = ImageService(config, platform=AMD64)

    async def load(
        self, data: bytes, options: ImportOptions = OPTIONS
    ) -> tuple[ImportedImage, ...]:
        return await self.service.import_archive(io.BytesIO(data), options)

    def files(self) -> dict[str, set[str]]:
        images = self.root / "images"
        blobs = {f"{d.name}/{p.name}" for d in (images / "blobs").iterdir() for p in d.iterdir()}
        return {
            "blobs": blobs,
            "layers": {p.name for p in (images / "layers").iterdir()},
            "ingest": {p.name for p in (images / "ingest").iterdir()},
        }

    def names(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return {v.id: (v.repo_tags, v.repo_digests) for v in self.service.list_images()}

    async def refused(self, data: bytes, match: str, options: ImportOptions = OPTIONS) -> None:
        before = (self.files(), self.names())
        with pytest.raises(FailedPrecondition, match=match):
            await self.load(data, options)
        assert (self.files(), self.names()) == before


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "root")
    yield store
    await store.service.close()


def layer_text(store: Store, image: str, path: str) -> str:
    rootfs = store.service.rootfs(image)
    for layer in reversed(rootfs.layers):
        if (layer / path).exists():
            return (layer / path).read_text()
    raise AssertionError(f"{path} not in {image}")


# --- OCI layouts --------------------------------------------------------------------------------


async def test_oci_layout_images_get_the_names_they_carry(store: Store) -> None:
    one, two = simple_image("one"), simple_image("two", compression="zstd")
    archive = oci_layout([(one, "registry.test/team/one:1.0", "1.0"), (two, "", "v2")]).build()
    imported = await store.load(archive)
    assert {(i.name, i.image_id) for i in imported} == {
        ("registry.test/team/one:1.0", one.id),
        (f"import-{TODAY}:v2", two.id),
    }
    assert store.names() == {
        one.id: (("registry.test/team/one:1.0",), ()),
        two.id: ((f"docker.io/library/import-{TODAY}:v2",), ()),
    }
    assert layer_text(store, "registry.test/team/one:1.0", "hello.txt") == "hello one"
    view = store.service.status(f"import-{TODAY}:v2")
    assert view is not None and view.id == two.id
    assert store.files()["ingest"] == set()


async def test_digests_names_every_entry_by_its_digest_as_ctr_does(store: Store) -> None:
    named, nameless = simple_image("named"), simple_image("nameless")
    archive = oci_layout([(named, "docker.io/library/app:1", "1"), (nameless, "", "")]).build()
    await store.load(archive, ImportOptions(date=TODAY, digests=True))
    prefix = f"docker.io/library/import-{TODAY}"
    assert store.names() == {
        named.id: (("docker.io/library/app:1",), (f"{prefix}@{named.digest}",)),
        nameless.id: ((), (f"{prefix}@{nameless.digest}",)),
    }


async def test_a_nameless_image_without_digests_is_kept_by_id(store: Store) -> None:
    image = simple_image("anon")
    await store.load(oci_layout([(image, "", "")]).build())
    assert store.names() == {image.id: ((), ())}
    assert store.service.status(image.id) is not None


def test_ref_names_follow_ctr() -> None:
    descriptor = m.Descriptor(m.OCI_MANIFEST, "sha256:" + "a" * 64, 1)
    digests = ImportOptions(date=TODAY, digests=True)
    assert entry_names(ArchiveEntry(descriptor, ref_name="latest"), OPTIONS) == (
        f"import-{TODAY}:latest",
    )
    assert entry_names(ArchiveEntry(descriptor, ref_name="reg.test/a:b"), OPTIONS) == (
        "reg.test/a:b",
    )
    assert entry_names(ArchiveEntry(descriptor, name="x:1", ref_name="1"), digests) == (
        "x:1",
        f"import-{TODAY}@{descriptor.digest}",
    )


async def test_an_index_gives_the_host_platform_through_nested_indexes(store: Store) -> None:
    amd = simple_image("amd64")
    arm_layer = make_layer([file("hello.txt", b"arm")])
    arm = make_image([arm_layer], architecture="arm64", variant="v8")
    inner = make_index([(m.Platform("linux", "arm64", "v8"), arm), (AMD64, amd)])
    outer = json.dumps(
        {"schemaVersion": 2, "manifests": [index_entry(m.OCI_INDEX, inner)]}
    ).encode()
    tar = oci_layout(
        [],
        extra=[(blob_name(sha256(inner)), inner), (blob_name(sha256(outer)), outer)]
        + [
            (blob_name(d), data)
            for i in (amd, arm)
            for d, data in {i.digest: i.manifest, **i.blobs}.items()
        ],
        entries=[index_entry(m.OCI_INDEX, outer, "registry.test/multi:1")],
    )
    await store.load(tar.build())
    assert store.names() == {amd.id: (("registry.test/multi:1",), ())}
    assert layer_text(store, "registry.test/multi:1", "hello.txt") == "hello amd64"
    record = store.service._state.images[amd.id]
    assert record.index_digests == (sha256(outer), sha256(inner))
    # The arm64 blobs were read but not kept: nothing here runs them.
    assert f"sha256/{arm_layer.digest.removeprefix('sha256:')}" not in store.files()["blobs"]


async def test_all_platforms_wants_every_platform_in_the_archive(store: Store) -> None:
    amd = simple_image("amd64")
    arm = make_image([make_layer([file("a", b"arm")])], architecture="arm64", variant="v8")
    index = make_index([(AMD64, amd), (m.Platform("linux", "arm64", "v8"), arm)])
    # Only the amd64 content, as `docker save` of one platform of a multi-platform image.
    tar = oci_layout(
        [],
        extra=[(blob_name(sha256(index)), index)]
        + [(blob_name(d), data) for d, data in {amd.digest: amd.manifest, **amd.blobs}.items()],
        entries=[index_entry(m.OCI_INDEX, index, "registry.test/partial:1")],
    )
    await store.refused(
        tar.build(), f"{arm.digest} is not in the archive", ImportOptions(TODAY, all_platforms=True)
    )
    await store.load(tar.build())
    assert store.names() == {amd.id: (("registry.test/partial:1",), ())}


# --- docker save --------------------------------------------------------------------------------


async def test_docker_archive_with_several_images_tags_and_shared_layers(store: Store) -> None:
    base = make_layer([directory("bin"), file("bin/sh", b"#!", 0o755)], "none")
    one = make_image([base, make_layer([file("hello.txt", b"one")], "none")], docker=True)
    two = make_image([base, make_layer([file("hello.txt", b"two")], "gzip")], docker=True)
    tar = docker_archive(
        [(one, ["app:1", "app:latest"]), (two, ["reg.test:5000/x/two:2"])], share_links=True
    )
    imported = await store.load(tar.build())
    assert sorted(i.name for i in imported) == [
        "docker.io/library/app:1",
        "docker.io/library/app:latest",
        "reg.test:5000/x/two:2",
    ]
    assert store.names() == {
        one.id: (("docker.io/library/app:1", "docker.io/library/app:latest"), ()),
        two.id: (("reg.test:5000/x/two:2",), ()),
    }
    assert layer_text(store, "app:latest", "hello.txt") == "one"
    assert layer_text(store, "reg.test:5000/x/two:2", "hello.txt") == "two"
    layers = store.service._state.images[two.id].layers
    assert [la.media_type for la in layers] == [
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ]


async def test_a_compressed_archive_on_a_pipe_like_stream_is_read(store: Store) -> None:
    image = simple_image("gz", compression="gzip")
    data = docker_archive([(image, ["gz:1"])], share_links=False).build(compress=True)

    class Pipe(io.RawIOBase):  # short reads, no seek, no peek
        def __init__(self) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            chunk = self.data.read(min(len(buffer), 1000))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    await store.service.import_archive(Pipe(), OPTIONS)  # type: ignore[arg-type]
    assert store.names() == {image.id: (("docker.io/library/gz:1",), ())}


async def test_docker_archive_manifest_digest_is_the_one_containerd_makes(store: Store) -> None:
    image = make_image([make_layer([file("a", b"a")], "none")], docker=True)
    imported = await store.load(
        docker_archive([(image, [])], share_links=False).build(), ImportOptions(TODAY, digests=True)
    )
    layer = image.layers[0]
    expected = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": m.DOCKER_MANIFEST,
            "config": {"mediaType": m.DOCKER_CONFIG, "digest": image.id, "size": len(image.config)},
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                    "digest": layer.digest,
                    "size": len(layer.blob),
                }
            ],
        },
        separators=(",", ":"),
    ).encode()
    assert imported[0].digest == sha256(expected)


# --- hostile archives ---------------------------------------------------------------------------


async def test_a_blob_whose_content_does_not_match_its_digest_is_refused(store: Store) -> None:
    image = simple_image("tampered")
    top = image.layers[1]
    tar = oci_layout([(image, "x:1", "")]).replace(blob_name(top.digest), b"evil" * 10)
    await store.refused(tar.build(), "does not match its digest")


async def test_a_config_that_does_not_match_is_refused(store: Store) -> None:
    image = simple_image("cfg")
    tar = oci_layout([(image, "x:1", "")]).replace(blob_name(image.id), b'{"rootfs": {}}')
    await store.refused(tar.build(), "does not match its digest")


async def test_a_layer_that_does_not_match_its_diff_id_is_refused(store: Store) -> None:
    honest = simple_image("diff")
    other = make_layer([file("other", b"x")])
    # The manifest names another layer's blob; the config keeps the honest diff IDs.
    swapped = make_image([honest.layers[0], other])
    config = json.loads(swapped.config)
    config["rootfs"]["diff_ids"] = [layer.diff_id for layer in honest.layers]
    config_bytes = json.dumps(config).encode()
    manifest = json.loads(swapped.manifest)
    manifest["config"] = {
        "mediaType": m.OCI_CONFIG,
        "digest": sha256(config_bytes),
        "size": len(config_bytes),
    }
    lying = Image(json.dumps(manifest).encode(), config_bytes, swapped.layers)
    await store.refused(oci_layout([(lying, "x:1", "")]).build(), "the image config says")


async def test_a_path_traversal_layer_is_refused_as_a_pull_refuses_it(store: Store) -> None:
    evil = make_layer([file("../../escape", b"pwned")], "none")
    image = make_image([evil], docker=True)
    tar = docker_archive([(image, ["evil:1"])], share_links=False)
    await store.refused(tar.build(), r"entry '\.\./\.\./escape' rejected")
    assert not (store.root.parent / "escape").exists()


async def test_a_symlink_layer_escape_is_refused(store: Store) -> None:
    evil = make_layer([symlink("etc", "/etc"), file("etc/passwd", b"root::0:0")], "gzip")
    tar = oci_layout([(make_image([evil]), "evil:2", "")])
    await store.refused(tar.build(), "symlink or not a directory")


async def test_a_blob_path_that_is_a_symlink_out_of_the_archive_is_refused(store: Store) -> None:
    image = simple_image("link")
    top = image.layers[1]
    tar = oci_layout([(image, "x:1", "")]).drop(blob_name(top.digest))
    tar.symlink(blob_name(top.digest), "/etc/passwd")
    await store.refused(tar.build(), "which is not in the archive")


async def test_a_symlinked_blob_inside_the_archive_is_followed(store: Store) -> None:
    image = simple_image("inside")
    top = image.layers[1]
    tar = oci_layout([(image, "x:1", "")]).drop(blob_name(top.digest))
    tar.file("elsewhere/top.tar.gz", top.blob).symlink(
        blob_name(top.digest), "../../elsewhere/top.tar.gz"
    )
    await store.load(tar.build())
    assert layer_text(store, "x:1", "hello.txt") == "hello inside"


async def test_manifest_json_paths_outside_the_archive_are_refused(store: Store) -> None:
    image = make_image([make_layer([file("a", b"a")], "none")], docker=True)
    tar = docker_archive([(image, ["x:1"])], share_links=False)
    doc = [
        {
            "Config": image.id.removeprefix("sha256:") + ".json",
            "RepoTags": ["x:1"],
            "Layers": ["../../../../etc/passwd"],
        }
    ]
    tar.replace("manifest.json", json.dumps(doc).encode())
    await store.refused(tar.build(), "points outside the archive")
    doc[0]["Layers"] = ["/etc/passwd"]
    tar.replace("manifest.json", json.dumps(doc).encode())
    await store.refused(tar.build(), "points outside the archive")


async def test_a_member_outside_the_archive_root_is_refused(store: Store) -> None:
    tar = oci_layout([(simple_image("abs"), "x:1", "")]).file("../escape", b"x")
    await store.refused(tar.build(), "points outside the archive")
    assert not (store.root / "escape").exists()


async def test_a_huge_declared_size_is_refused(store: Store) -> None:
    image = simple_image("huge")
    doc = json.loads(image.manifest)
    doc["layers"][1]["size"] = 1 << 50
    manifest = json.dumps(doc).encode()
    tar = oci_layout(
        [],
        extra=[(blob_name(sha256(manifest)), manifest)]
        + [(blob_name(d), b) for d, b in image.blobs.items()],
        entries=[index_entry(m.OCI_MANIFEST, manifest, "x:1")],
    )
    await store.refused(tar.build(), "declares 1125899906842624 bytes")


async def test_a_member_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    small = Store(tmp_path / "small", max_layer_bytes=1000)
    try:
        image = make_image([make_layer([file("big", b"x" * 5000)], "none")], docker=True)
        await small.refused(
            docker_archive([(image, ["big:1"])], share_links=False).build(), "more than the 1000"
        )
    finally:
        await small.service.close()


async def test_a_truncated_archive_is_refused(store: Store) -> None:
    data = oci_layout([(simple_image("cut"), "x:1", "")]).build()
    # Cut inside the last member's data: its header promises more than follows.
    await store.refused(data[: len(data) // 2], "truncated|not a valid tar")


async def test_something_that_is_not_an_archive_is_refused(store: Store) -> None:
    await store.refused(Tar().file("hello", b"x").build(), "not an image archive")
    await store.refused(b"\x1f\x8b garbage", "corrupt")


async def test_a_failure_in_the_second_image_imports_neither(store: Store) -> None:
    good, bad = simple_image("good"), make_image([make_layer([file("../x", b"")])])
    await store.refused(oci_layout([(good, "good:1", ""), (bad, "bad:1", "")]).build(), "rejected")
    assert store.service.status("good:1") is None


async def test_import_keeps_what_a_pull_or_earlier_import_stored(store: Store) -> None:
    image = simple_image("again")
    await store.load(oci_layout([(image, "a:1", "")]).build())
    before = store.files()
    await store.load(oci_layout([(image, "a:2", "")]).build())
    assert store.files() == before
    assert store.names() == {image.id: (("docker.io/library/a:1", "docker.io/library/a:2"), ())}


# --- export, tag --------------------------------------------------------------------------------


async def test_export_round_trips_through_import(store: Store, tmp_path: Path) -> None:
    one, two = simple_image("one"), simple_image("two", compression="zstd")
    await store.load(oci_layout([(one, "reg.test/one:1", ""), (two, "two:2", "")]).build())
    out = io.BytesIO()
    await store.service.export(["reg.test/one:1", two.id], out)
    data = out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert {"oci-layout", "index.json", "manifest.json", blob_name(one.layers[0].digest)} <= set(
        names
    )
    assert [d["RepoTags"] for d in docker] == [["reg.test/one:1"], ["two:2"]]
    other = Store(tmp_path / "other")
    try:
        await other.load(data)
        assert other.names() == {
            one.id: (("reg.test/one:1",), ()),
            two.id: (("docker.io/library/two:2",), ()),
        }
        # The Docker half alone (what `docker load` of an old Docker reads) imports too.
        third = Store(tmp_path / "third")
        try:
            rebuilt = Tar()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name not in ("oci-layout", "index.json"):
                        rebuilt.file(member.name, tar.extractfile(member).read())  # type: ignore[union-attr]
            await third.load(rebuilt.build())
            assert third.names() == other.names()
            assert layer_text(third, "two:2", "hello.txt") == "hello two"
        finally:
            await third.service.close()
    finally:
        await other.service.close()


async def test_export_of_an_unknown_image_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.service.export(["nothing:1"], io.BytesIO())


async def test_tag_adds_a_name_and_moves_one_only_when_forced(store: Store) -> None:
    one, two = simple_image("one"), simple_image("two")
    await store.load(oci_layout([(one, "a:1", ""), (two, "b:1", "")]).build())
    await store.service.tag(one.id, "c:1")
    assert store.names()[one.id][0] == ("docker.io/library/a:1", "docker.io/library/c:1")
    with pytest.raises(AlreadyExists):
        await store.service.tag(two.id, "a:1")
    await store.service.tag(two.id, "a:1", force=True)
    assert store.names() == {
        one.id: (("docker.io/library/c:1",), ()),
        two.id: (("docker.io/library/a:1", "docker.io/library/b:1"), ()),
    }
    with pytest.raises(NotFound):
        await store.service.tag("sha256:" + "0" * 64, "d:1")
