"""The image store on disk: blobs by digest, unpacked layers by chain ID, image metadata.

Layout under `<root_dir>/images`:
    blobs/<algorithm>/<hex>   verified content (manifests, configs, compressed layers)
    layers/<chain>/           one unpacked layer each (`<chain>` is the chain ID's hex, or
                              `<algorithm>-<hex>` for algorithms other than sha256)
    ingest/                   downloads in progress (temp files, never trusted)
    trash/                    garbage being deleted
    images.json               every image record and container lease, in one atomic file

Everything becomes visible by a rename of something complete; `images.json` is written last,
so a crash at any instant leaves either the old image set or the new one, plus files that no
record references, which `recover()` and `collect_garbage()` remove. What to keep is decided by
the service; this module only knows how to keep and drop.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_py.errors import FailedPrecondition, Internal
from cri_py.images.reference import validate_digest
from cri_py.log import get_logger
from cri_py.store.atomic import read_json, write_json_atomic
from cri_py.store.trash import remove_tree, trash_name

log = get_logger("cri_py.images.store")

METADATA_VERSION = 1


@dataclass(frozen=True)
class LayerRecord:
    digest: str  # the compressed blob
    size: int  # bytes of the compressed blob
    media_type: str
    diff_id: str  # the uncompressed tar's digest
    chain_id: str
    unpacked_bytes: int  # bytes of regular files in the unpacked layer
    inodes: int  # entries in the unpacked layer


@dataclass(frozen=True)
class ImageRecord:
    """One image. Its ID is its config digest; names are kept fully qualified."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    manifest_digest: str  # the platform manifest
    manifest_size: int
    index_digests: tuple[str, ...]  # indexes the image was reached through (for repo digests)
    index_sizes: tuple[int, ...]
    config_size: int
    layers: tuple[LayerRecord, ...]
    user: str  # the config's USER, verbatim

    @property
    def config_digest(self) -> str:
        return self.id

    @property
    def size(self) -> int:
        """The CRI's image size: compressed layers plus the config (what a pull transfers)."""
        return self.config_size + sum(layer.size for layer in self.layers)

    @property
    def blobs(self) -> dict[str, int]:
        """Every blob this image keeps alive, with its size."""
        sizes = {self.manifest_digest: self.manifest_size, self.id: self.config_size}
        sizes.update(zip(self.index_digests, self.index_sizes, strict=True))
        sizes.update((layer.digest, layer.size) for layer in self.layers)
        return sizes

    def to_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repo_tags": list(self.repo_tags),
            "repo_digests": list(self.repo_digests),
            "manifest_digest": self.manifest_digest,
            "manifest_size": self.manifest_size,
            "index_digests": list(self.index_digests),
            "index_sizes": list(self.index_sizes),
            "config_size": self.config_size,
            "layers": [vars(layer) for layer in self.layers],
            "user": self.user,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ImageRecord:
        return cls(
            id=data["id"],
            repo_tags=tuple(data["repo_tags"]),
            repo_digests=tuple(data["repo_digests"]),
            manifest_digest=data["manifest_digest"],
            manifest_size=data["manifest_size"],
            index_digests=tuple(data["index_digests"]),
            index_sizes=tuple(data["index_sizes"]),
            config_size=data["config_size"],
            layers=tuple(LayerRecord(**layer) for layer in data["layers"]),
            user=data["user"],
        )


@dataclass(frozen=True)
class StoreState:
    """Everything in `images.json`: images by ID and container leases on layers by owner."""

    images: Mapping[str, ImageRecord] = field(default_factory=dict)
    leases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def digest_path(digest: str) -> str:
    """`sha256:ab..` -> `ab..`; other algorithms keep their name: `sha512-cd..`."""
    validate_digest(digest)
    algorithm, _, encoded = digest.partition(":")
    return encoded if algorithm == "sha256" else f"{algorithm}-{encoded}"


def measure_tree(path: Path) -> tuple[int, int]:
    """(bytes of regular files, inodes) under `path` and itself, hard links counted once;
    unreadable directories are counted but not entered."""
    seen: set[tuple[int, int]] = set()
    total, inodes = 0, 1
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            inodes += 1
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
            elif stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
    return total, inodes


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A download into `ingest/`: hashed and sized as written, committed only when both match.

    Implements the registry client's sink protocol.
    """

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        self._store = store
        self._digest = digest
        self._size = size
        self._written = 0
        self._hash = hashlib.new(digest.partition(":")[0])
        self._path = store.ingest_dir / f"{digest_path(digest)}-{secrets.token_hex(6)}"
        self._fd: int | None = os.open(
            self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise Internal(f"blob {self._digest}: write after commit or abort")
        self._written += len(data)
        if self._written > self._size:
            raise FailedPrecondition(
                f"blob {self._digest}: more than the {self._size} bytes the manifest declares"
            )
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def commit(self) -> None:
        if self._fd is None:
            raise Internal(f"blob {self._digest}: commit after commit or abort")
        if self._written != self._size:
            raise FailedPrecondition(
                f"blob {self._digest}: got {self._written} bytes, the manifest declares "
                f"{self._size}"
            )
        actual = f"{self._hash.name}:{self._hash.hexdigest()}"
        if actual != self._digest:
            raise FailedPrecondition(f"blob digest mismatch: expected {self._digest}, got {actual}")
        fd, self._fd = self._fd, None
        target = self._store.blob_path(self._digest)
        try:
            await asyncio.to_thread(self._finish, fd, target)
        except BaseException:
            self._path.unlink(missing_ok=True)
            raise

    def _finish(self, fd: int, target: Path) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(self._path, target)
        fsync_dir(target.parent)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._path.unlink(missing_ok=True)


class ContentStore:
    """Files under `<root_dir>/images`; in-memory state is the service's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.layers_dir = root / "layers"
        self.ingest_dir = root / "ingest"
        self.trash_dir = root / "trash"
        self.metadata_path = root / "images.json"
        for directory in (self.root, self.blobs_dir, self.layers_dir, self.ingest_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.trash_dir.mkdir(mode=0o700, exist_ok=True)

    # -- blobs --

    def blob_path(self, digest: str) -> Path:
        validate_digest(digest)
        algorithm, _, encoded = digest.partition(":")
        return self.blobs_dir / algorithm / encoded

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def blob_writer(self, digest: str, size: int) -> BlobWriter:
        return BlobWriter(self, digest, size)

    async def put_blob(self, digest: str, data: bytes) -> None:
        """Stores already-verified bytes (a manifest or config read whole) under `digest`."""
        writer = self.blob_writer(digest, len(data))
        try:
            writer.write(data)
            await writer.commit()
        except BaseException:
            writer.abort()
            raise

    async def adopt_blob(self, digest: str, path: Path) -> None:
        """Moves a file of `ingest/` whose content the caller has verified to be `digest`
        (an import hashed it as it was written there) into place as that blob."""
        target = self.blob_path(digest)
        if path.parent != self.ingest_dir:
            raise Internal(f"blob {digest}: {path} is not in {self.ingest_dir}")

        def move() -> None:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(path, target)
            fsync_dir(target.parent)

        await asyncio.to_thread(move)

    # -- layers --

    def layer_path(self, chain_id: str) -> Path:
        return self.layers_dir / digest_path(chain_id)

    def has_layer(self, chain_id: str) -> bool:
        return self.layer_path(chain_id).is_dir()

    # -- metadata --

    def load(self) -> StoreState:
        data = read_json(self.metadata_path)
        if data is None:
            return StoreState()
        if data.get("version") != METADATA_VERSION:
            raise Internal(
                f"{self.metadata_path}: metadata version {data.get('version')!r}, "
                f"this cri-py reads version {METADATA_VERSION}"
            )
        images = {key: ImageRecord.from_data(value) for key, value in data["images"].items()}
        leases = {owner: tuple(chains) for owner, chains in data.get("leases", {}).items()}
        return StoreState(images=images, leases=leases)

    def save(self, state: StoreState) -> None:
        """Replaces `images.json` atomically (blocking: call it from a worker thread)."""
        write_json_atomic(
            self.metadata_path,
            {
                "version": METADATA_VERSION,
                "images": {key: record.to_data() for key, record in state.images.items()},
                "leases": {owner: list(chains) for owner, chains in state.leases.items()},
            },
        )

    # -- garbage --

    def _blob_files(self) -> Iterator[tuple[str, Path]]:
        for algorithm_dir in self.blobs_dir.iterdir():
            for path in algorithm_dir.iterdir():
                yield f"{algorithm_dir.name}:{path.name}", path

    def _layer_dirs(self) -> Iterator[tuple[str, Path]]:
        for path in self.layers_dir.iterdir():
            if path.name.startswith("."):
                continue  # an unpack in progress (`.tmp-*`), never garbage while we run
            algorithm, sep, encoded = path.name.rpartition("-")
            yield (f"{algorithm}:{encoded}" if sep else f"sha256:{encoded}"), path

    def move_garbage_to_trash(self, keep_blobs: Iterable[str], keep_layers: Iterable[str]) -> int:
        """Moves every blob and layer not kept into `trash/` (renames only, so it is quick and
        cannot race with a pull checking what exists); returns how many were moved."""
        blobs, layers = set(keep_blobs), set(keep_layers)
        moved = 0
        victims = [path for digest, path in self._blob_files() if digest not in blobs]
        victims += [path for chain, path in self._layer_dirs() if chain not in layers]
        for path in victims:
            target = self.trash_dir / trash_name(path)
            try:
                os.rename(path, target)
                moved += 1
            except FileNotFoundError:
                continue
        return moved

    def empty_trash(self) -> None:
        """Deletes what is in `trash/` (blocking: call it from a worker thread)."""
        for path in list(self.trash_dir.iterdir()):
            remove_tree(path)

    def recover(self) -> None:
        """At startup, before any pull: drops downloads and unpacks a crash interrupted."""
        for path in self.ingest_dir.iterdir():
            path.unlink(missing_ok=True)
        for path in self.layers_dir.iterdir():
            if path.name.startswith("."):
                remove_tree(path)
        self.empty_trash()


def rename_noreplace(source: Path, target: Path) -> bool:
    """Renames a directory into place; False when `target` already exists (someone else won)."""
    try:
        os.rename(source, target)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True
