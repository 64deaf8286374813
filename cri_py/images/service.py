"""The image service: pull, import, export, tag, status, list, remove, disk usage, and layers
for containers.

It decides what happens and owns the image state; `pull` pulls (with `registry` fetching and
`unpack` unpacking), `store` keeps, `catalog` resolves names, `reference` and `manifest` parse.
Image state lives in memory (List and Status never touch the disk) and in the store's one
metadata file, replaced atomically on every change.

Removing an image that containers use is allowed, as in containerd: the image and its names go
at once; its layers stay on disk while a container holds a lease on them (`lease_layers`) and
are collected when the last lease is released (`release_layers`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cri_py.config import Config, RegistryHost
from cri_py.errors import AlreadyExists, InvalidArgument, NotFound
from cri_py.images.archive import ArchiveLimits
from cri_py.images.catalog import Catalog, with_pulled
from cri_py.images.endpoints import Credentials
from cri_py.images.export import ExportedImage, write_archive
from cri_py.images.importer import ImportedImage, Importer, ImportOptions
from cri_py.images.manifest import Platform, parse_image_config, user_of
from cri_py.images.pull import Puller, host_platform
from cri_py.images.reference import parse_reference, pull_reference
from cri_py.images.registry import RegistryClient
from cri_py.images.store import ContentStore, ImageRecord, StoreState
from cri_py.linux import malloc
from cri_py.log import get_logger
from cri_py.model.image import RuntimeConfig

if TYPE_CHECKING:
    import httpx  # imported by the registry client on the first pull

log = get_logger("cri_py.images")


@dataclass(frozen=True)
class ImageView:
    """An image as the CRI reports it."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    uid: int | None
    username: str
    pinned: bool


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass(frozen=True)
class ImageRootfs:
    """What a container needs from its image.

    `layers` are the unpacked layer directories, lowest first; overlay's `lowerdir=` lists them
    the other way round (uppermost first). An image can have no layers at all.
    """

    image_id: str
    layers: tuple[Path, ...]
    config: RuntimeConfig
    repo_tags: tuple[str, ...] = ()


class ImageService:
    """Images on this node. One instance per daemon; all methods run on its event loop.

    `transport` replaces the network (tests); `platform` the host platform.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        platform: Platform | None = None,
    ) -> None:
        self._store = ContentStore(Path(config.root_dir) / "images")
        self._registry = RegistryClient(config.registries, config.images, transport)
        self._pinned = self._normalise_pinned(config.images.pinned)
        self._lock = asyncio.Lock()  # serialises changes to the metadata
        self._trash_lock = asyncio.Lock()
        self._runtime_configs: dict[str, RuntimeConfig] = {}
        # Store writes get a thread of their own: release_layers is awaited from threads of
        # the default pool (RemovePodSandbox), so it must not need a free thread of that pool
        # (50 concurrent removes took them all and waited out their 60 s timeout).
        self._store_io = concurrent.futures.ThreadPoolExecutor(1, "image-store")
        self._pulls_running = 0
        # The daemon's metrics hooks: bytes received for blobs, and each finished pull's seconds.
        self.on_downloaded: Callable[[int], None] = lambda count: None
        self.on_pulled: Callable[[float], None] = lambda seconds: None
        self._puller = Puller(
            self._store,
            self._registry,
            config.images,
            platform or host_platform(),
            layer_stats=lambda chain_id: self._catalog.layer_stats.get(chain_id),
            commit=self._commit,
            # Looked up at each call: the daemon sets the hooks after construction.
            on_downloaded=lambda count: self.on_downloaded(count),
            on_pulled=lambda seconds: self.on_pulled(seconds),
        )
        self._importer = Importer(
            self._store, self._puller, ArchiveLimits(max_member_bytes=config.images.max_layer_bytes)
        )
        self._store.recover()
        self._set_state(self._store.load())
        self._store.move_garbage_to_trash(*self._kept())
        self._store.empty_trash()

    @staticmethod
    def _normalise_pinned(pinned: Sequence[str]) -> frozenset[str]:
        names = set()
        for text in pinned:
            try:
                ref = pull_reference(text)
            except InvalidArgument as e:
                log.warning("ignoring pinned image", image=text, error=str(e))
                continue
            names.add(ref.with_digest(ref.digest) if ref.digest else str(ref))
        return frozenset(names)

    async def close(self) -> None:
        await self._registry.aclose()
        self._store_io.shutdown(wait=False)

    # -- settings a config reload changes --

    def set_registries(self, registries: Mapping[str, RegistryHost]) -> None:
        """Mirrors and credentials for pulls that start from now on."""
        self._registry.set_registries(registries)

    def set_pinned(self, pinned: Sequence[str]) -> None:
        self._pinned = self._normalise_pinned(pinned)

    # -- in-memory state --

    def _set_state(self, state: StoreState) -> None:
        self._catalog = Catalog.of(state)
        for image_id in list(self._runtime_configs):
            if image_id not in state.images:
                del self._runtime_configs[image_id]

    @property
    def _state(self) -> StoreState:
        return self._catalog.state

    def _kept(self) -> tuple[set[str], set[str]]:
        """Blobs and layers that must stay: an image's, a container lease's, a pull's."""
        return self._catalog.kept(*self._puller.held())

    async def _save(self, state: StoreState) -> None:
        await asyncio.get_running_loop().run_in_executor(self._store_io, self._store.save, state)
        self._set_state(state)

    async def _collect_garbage(self) -> None:
        """Moves what nothing keeps into the trash (on the loop: renames only, atomic with
        respect to pulls checking what exists), then deletes the trash in a thread."""
        moved = self._store.move_garbage_to_trash(*self._kept())
        if moved:
            async with self._trash_lock:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._store_io, self._store.empty_trash)
            log.info("collected image garbage", items=moved)

    # -- lookups --

    def _view(self, record: ImageRecord) -> ImageView:
        uid, username = user_of(record.user)
        pinned = any(name in self._pinned for name in (*record.repo_tags, *record.repo_digests))
        return ImageView(
            id=record.id,
            repo_tags=record.repo_tags,
            repo_digests=record.repo_digests,
            size=record.size,
            uid=uid,
            username=username,
            pinned=pinned,
        )

    def status(self, image: str) -> ImageView | None:
        """The image `image` names, or None when it is not here."""
        record = self._catalog.resolve(image)
        return None if record is None else self._view(record)

    def verbose_info(self, image_id: str) -> dict[str, str]:
        """ImageStatus's verbose info, as containerd shapes it: key `info`, a JSON document
        with the manifest and the config (also under containerd's name `imageSpec`)."""
        record = self._state.images.get(image_id)
        if record is None:
            return {}
        config = json.loads(self._store.read_blob(record.id))
        document = {
            "id": record.id,
            "repoTags": list(record.repo_tags),
            "repoDigests": list(record.repo_digests),
            "size": record.size,
            "pinned": self._view(record).pinned,
            "manifestDigest": record.manifest_digest,
            "manifest": json.loads(self._store.read_blob(record.manifest_digest)),
            "config": config,
            "imageSpec": config,
            "chainID": record.layers[-1].chain_id if record.layers else "",
            "layers": [
                {
                    "digest": layer.digest,
                    "mediaType": layer.media_type,
                    "size": layer.size,
                    "diffID": layer.diff_id,
                    "chainID": layer.chain_id,
                    "path": str(self._store.layer_path(layer.chain_id)),
                }
                for layer in record.layers
            ],
        }
        return {"info": json.dumps(document)}

    def list_images(self, image: str = "") -> list[ImageView]:
        """Every image, or those `image` selects: with a tag, digest or ID, the one image it
        names; a bare repository name (`busybox`) selects every image of that repository."""
        return [self._view(record) for record in self._catalog.select(image)]

    def fs_usage(self) -> FsUsage:
        """Bytes and inodes the image store uses: blobs plus unpacked layers, kept up to date
        on every change (kubelet polls this), not measured by walking the disk."""
        used_bytes, inodes = self._catalog.usage
        return FsUsage(
            mountpoint=str(self._store.root),
            used_bytes=used_bytes,
            inodes_used=inodes,
            timestamp_ns=time.time_ns(),
        )

    # -- for containers --

    def rootfs(self, image: str) -> ImageRootfs:
        """The unpacked layers (lowest first) and runtime config of the image `image` names
        (by ID, or any reference `status` accepts); NotFound when it is not here."""
        record = self._catalog.resolve(image)
        if record is None:
            raise NotFound(f"image {image} not present; pull it first")
        config = self._runtime_configs.get(record.id)
        if config is None:
            config = parse_image_config(self._store.read_blob(record.id)).runtime
            self._runtime_configs[record.id] = config
        layers = tuple(self._store.layer_path(layer.chain_id) for layer in record.layers)
        return ImageRootfs(
            image_id=record.id, layers=layers, config=config, repo_tags=record.repo_tags
        )

    async def lease_layers(self, owner: str, image: str) -> ImageRootfs:
        """As `rootfs`, and keeps the layers on disk for `owner` (a container ID) until
        `release_layers(owner)`, even if the image is removed meanwhile. Persisted."""
        rootfs, written = await self.lease_soon(owner, image)
        await asyncio.wrap_future(written)
        return rootfs

    async def lease_soon(
        self, owner: str, image: str
    ) -> tuple[ImageRootfs, concurrent.futures.Future[None]]:
        """As `lease_layers`, but answers once the lease holds in memory (no collection takes
        the layers from then on); the future ends when images.json has it too. Until then the
        caller makes nothing that outlives a crash of the daemon on these layers (a container's
        process): a restart knows only the leases on disk. Store writes run in order on one
        thread, so a later change is written after this one."""
        async with self._lock:
            rootfs = self.rootfs(image)
            record = self._state.images[rootfs.image_id]
            leases = dict(self._state.leases)
            leases[owner] = tuple(layer.chain_id for layer in record.layers)
            state = dataclasses.replace(self._state, leases=leases)
            written = self._store_io.submit(self._store.save, state)
            self._set_state(state)
        return rootfs, written

    def lease_owners(self) -> set[str]:
        """Who holds layer leases: container IDs (a volume's `<ID>/...` counts as its ID)."""
        return {owner.split("/", 1)[0] for owner in self._state.leases}

    async def release_layers(self, owner: str) -> None:
        """Drops `owner`'s lease and those of `owner/...` (a container's image volumes);
        layers nothing else keeps are collected. Idempotent."""
        async with self._lock:
            prefix = f"{owner}/"
            leases = {
                k: v
                for k, v in self._state.leases.items()
                if k != owner and not k.startswith(prefix)
            }
            if len(leases) == len(self._state.leases):
                return
            released = {
                chain
                for key, chains in self._state.leases.items()
                if key not in leases
                for chain in chains
            }
            state = dataclasses.replace(self._state, leases=leases)
            try:
                await self._save(state)
            except OSError:
                # The owner is gone either way (a create that failed, perhaps for this very
                # disk): a lease left on disk is released by the next start's recovery, which
                # finds no container of that ID.
                self._set_state(state)
                raise
            # Layers an image or another container still keeps cannot be garbage: no scan of
            # every blob and layer on disk then (the usual case, on every RemoveContainer).
            if released - self._kept()[1]:
                await self._collect_garbage()

    # -- remove --

    async def remove(self, image: str) -> None:
        """Removes the image `image` names, with all its tags and digests, and collects what
        only it kept. Unknown images are fine (idempotent); pinned images are removed too (the
        CRI: pinning is a hint to kubelet's GC, not a refusal)."""
        async with self._lock:
            record = self._catalog.resolve(image)
            if record is None:
                return
            images = {k: v for k, v in self._state.images.items() if k != record.id}
            await self._save(dataclasses.replace(self._state, images=images))
            log.info("removed image", image=record.id, tags=list(record.repo_tags))
            await self._collect_garbage()

    # -- pull --

    async def pull(self, image: str, credentials: Credentials | None = None) -> str:
        """Pulls `image` and returns the image ID. Concurrent pulls of the same reference (with
        the same credentials) share one pull; blobs and layers are fetched and unpacked once
        even across different references."""
        self._pulls_running += 1
        try:
            return await self._puller.pull(image, credentials)
        finally:
            self._pulls_running -= 1
            if not self._pulls_running:
                # The pulls' buffers are freed, but glibc keeps the pages (~3 MiB of RSS after
                # one pull): handed back, off the loop and after the reply, not waited for.
                with contextlib.suppress(RuntimeError):  # the executor is shut down
                    self._store_io.submit(malloc.trim)

    # -- import, export, tag (`cri-py images ...`, the `ctr` stand-in) --

    async def import_archive(
        self, stream: IO[bytes], options: ImportOptions
    ) -> tuple[ImportedImage, ...]:
        """Imports every image of the archive read from `stream` (OCI layout or `docker save`
        tar), with the names it carries, or none of them: on failure what the import stored
        is collected again and no image changes."""
        try:
            imported = await self._importer.import_archive(stream, options, self._commit_all)
        except BaseException:
            async with self._lock:
                await self._collect_garbage()
            raise
        for image in imported:
            log.info("imported image", image=image.name or "<none>", id=image.image_id)
        return imported

    async def _commit_all(self, records: Sequence[ImageRecord]) -> None:
        """Makes imported images visible in one metadata write, each merged as a pull is."""
        async with self._lock:
            images = dict(self._state.images)
            for record in records:
                images = with_pulled(images, record)
            await self._save(dataclasses.replace(self._state, images=images))

    async def export(self, images: Sequence[str], out: IO[bytes]) -> None:
        """Writes the images `images` name to `out` as an OCI layout tar with Docker's
        `manifest.json` (`export.write_archive`). A name given by tag is written under that
        tag; by ID or digest, under every tag of the image."""
        if not images:
            raise InvalidArgument("export: name at least one image")
        chosen: dict[str, tuple[ImageRecord, list[str]]] = {}
        for image in images:
            record = self._catalog.resolve(image)
            if record is None:
                raise NotFound(f"image {image} not present")
            names = chosen.setdefault(record.id, (record, []))[1]
            try:
                ref = parse_reference(image)
                tag = "" if ref.digest else ref.tagged()
            except InvalidArgument:
                tag = ""
            for name in (tag,) if tag in record.repo_tags else record.repo_tags:
                if name not in names:
                    names.append(name)
        exported = [ExportedImage(record, tuple(names)) for record, names in chosen.values()]
        with self._puller.hold() as hold:
            for record, _ in chosen.values():
                for digest in record.blobs:
                    hold.blob(digest)
            await asyncio.to_thread(write_archive, out, exported, self._store)

    async def tag(self, source: str, target: str, *, force: bool = False) -> str:
        """Gives the image `source` names the repo tag `target` (taken from the image that had
        it only with `force`, as `ctr images tag --force`); returns the image ID."""
        ref = parse_reference(target)
        if ref.digest:
            raise InvalidArgument(f"tag {target}: a tag is name:tag, not a digest")
        tag = ref.tagged()
        async with self._lock:
            record = self._catalog.resolve(source)
            if record is None:
                raise NotFound(f"image {source} not present")
            owner = self._catalog.by_tag.get(tag)
            if owner == record.id:
                return record.id
            if owner is not None and not force:
                raise AlreadyExists(f"image {tag} already names image {owner} (use --force)")
            tagged = dataclasses.replace(record, repo_tags=(*record.repo_tags, tag))
            images = with_pulled(self._state.images, tagged)
            await self._save(dataclasses.replace(self._state, images=images))
        log.info("tagged image", image=record.id, tag=tag)
        return record.id

    async def _commit(self, record: ImageRecord) -> None:
        """Makes a pulled image visible (one atomic metadata write): merges names into an image
        already known by this ID, and takes the tag away from any other image that had it."""
        async with self._lock:
            images = with_pulled(self._state.images, record)
            await self._save(dataclasses.replace(self._state, images=images))
