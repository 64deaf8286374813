"""The content store: verified commits only, atomic metadata, garbage moved out by renames,
and recovery from whatever a crash left in ingest/, layers/ and trash/."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cri_py.errors import FailedPrecondition, Internal, InvalidArgument
from cri_py.images.store import (
    ContentStore,
    ImageRecord,
    LayerRecord,
    StoreState,
    digest_path,
    measure_tree,
)

from .fakes import sha256


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "images")


def record(image_id: str, *layers: str) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        repo_tags=("r.test/a:1",),
        repo_digests=(f"r.test/a@{sha256(b'manifest')}",),
        manifest_digest=sha256(b"manifest"),
        manifest_size=8,
        index_digests=(sha256(b"index"),),
        index_sizes=(5,),
        config_size=10,
        layers=tuple(
            LayerRecord(
                digest=sha256(layer.encode()),
                size=len(layer),
                media_type="application/vnd.oci.image.layer.v1.tar",
                diff_id=sha256(b"diff" + layer.encode()),
                chain_id=sha256(b"chain" + layer.encode()),
                unpacked_bytes=100,
                inodes=3,
            )
            for layer in layers
        ),
        user="0",
    )


async def test_blob_writer_commits_only_verified_content(store: ContentStore) -> None:
    data = b"hello blob"
    digest = sha256(data)
    writer = store.blob_writer(digest, len(data))
    writer.write(data[:4])
    writer.write(data[4:])
    await writer.commit()
    assert store.read_blob(digest) == data
    assert store.blob_path(digest) == store.blobs_dir / "sha256" / digest[7:]
    assert stat.S_IMODE(store.blob_path(digest).stat().st_mode) == 0o600
    assert list(store.ingest_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("chunks", "declared", "reason"),
    [
        ([b"hello"], 5, "digest mismatch"),
        ([b"hell"], 5, "got 4 bytes"),
        ([b"hello", b"!"], 5, "more than the 5 bytes"),
    ],
)
async def test_blob_writer_rejects_wrong_content(
    store: ContentStore, chunks: list[bytes], declared: int, reason: str
) -> None:
    digest = sha256(b"other")
    writer = store.blob_writer(digest, declared)
    with pytest.raises(FailedPrecondition, match=reason):
        for chunk in chunks:
            writer.write(chunk)
        await writer.commit()
    writer.abort()
    assert not store.has_blob(digest)
    assert list(store.ingest_dir.iterdir()) == []
    with pytest.raises(Internal):
        writer.write(b"x")


async def test_put_blob_and_digest_paths(store: ContentStore) -> None:
    await store.put_blob(sha256(b"x"), b"x")
    assert store.has_blob(sha256(b"x"))
    assert digest_path(sha256(b"x")) == sha256(b"x")[7:]
    assert digest_path("sha512:" + "ab" * 64) == "sha512-" + "ab" * 64
    with pytest.raises(InvalidArgument):
        store.blob_path("sha256:../../etc/passwd")
    with pytest.raises(FailedPrecondition):
        await store.put_blob(sha256(b"x"), b"y")


def test_metadata_round_trips_and_is_replaced_atomically(store: ContentStore) -> None:
    assert store.load() == StoreState()
    state = StoreState(
        images={"sha256:" + "1" * 64: record("sha256:" + "1" * 64, "a", "b")},
        leases={"container-1": (sha256(b"chaina"),)},
    )
    store.save(state)
    assert store.load() == state
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".images.json")] == []


def test_unknown_metadata_version_is_refused(store: ContentStore) -> None:
    store.metadata_path.write_text('{"version": 99, "images": {}}')
    with pytest.raises(Internal, match="version 99"):
        store.load()


def test_record_size_and_blobs() -> None:
    r = record("sha256:" + "1" * 64, "aa", "bbb")
    assert r.size == 10 + 2 + 3
    assert set(r.blobs) == {
        r.id,
        r.manifest_digest,
        sha256(b"index"),
        sha256(b"aa"),
        sha256(b"bbb"),
    }


async def test_garbage_is_moved_to_trash_then_deleted(store: ContentStore) -> None:
    for data in (b"keep", b"drop"):
        await store.put_blob(sha256(data), data)
    for chain in (sha256(b"keep"), sha256(b"drop")):
        (store.layer_path(chain) / "etc").mkdir(parents=True)
    (store.layers_dir / ".tmp-in-progress").mkdir()
    moved = store.move_garbage_to_trash({sha256(b"keep")}, {sha256(b"keep")})
    assert moved == 2
    assert store.has_blob(sha256(b"keep")) and not store.has_blob(sha256(b"drop"))
    assert store.has_layer(sha256(b"keep")) and not store.has_layer(sha256(b"drop"))
    assert (store.layers_dir / ".tmp-in-progress").exists()  # an unpack in flight
    assert len(list(store.trash_dir.iterdir())) == 2
    store.empty_trash()
    assert list(store.trash_dir.iterdir()) == []


def test_recover_drops_what_a_crash_left(store: ContentStore) -> None:
    (store.ingest_dir / "partial").write_bytes(b"x")
    (store.layers_dir / ".tmp-abc-123" / "d").mkdir(parents=True)
    (store.trash_dir / "old").mkdir()
    store.recover()
    assert list(store.ingest_dir.iterdir()) == []
    assert list(store.layers_dir.iterdir()) == []
    assert list(store.trash_dir.iterdir()) == []


def test_measure_tree_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"12345")
    os.link(tmp_path / "d" / "f", tmp_path / "g")
    os.symlink("f", tmp_path / "d" / "s")
    assert measure_tree(tmp_path) == (5, 4)  # root, d, f(=g), s
