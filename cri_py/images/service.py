"""The image service: pull, status, list, remove, disk usage, and layers for containers.

It decides what happens; `registry` fetches, `store` keeps, `unpack` unpacks, `reference` and
`manifest` parse. Image state lives in memory (List and Status never touch the disk) and in the
store's one metadata file, replaced atomically on every change.

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
import platform
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from cri_py.config import Config, RegistryHost
from cri_py.errors import CriError, FailedPrecondition, InvalidArgument, NotFound
from cri_py.images.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    chain_ids,
    check_layers_match,
    parse_image_config,
    parse_manifest,
    select_platform,
    user_of,
)
from cri_py.images.reference import (
    Reference,
    explicit_tag_or_digest,
    parse_image_id,
    parse_reference,
    pull_reference,
)
from cri_py.images.registry import Credentials, Endpoint, RegistryClient
from cri_py.images.store import ContentStore, ImageRecord, LayerRecord, StoreState, measure_tree
from cri_py.images.unpack import LayerLimits, unpack_layer
from cri_py.log import get_logger
from cri_py.model.image import RuntimeConfig

log = get_logger("cri_py.images")

PROGRESS_LOG_SECONDS = 10.0
MIB = 1024 * 1024
# Short image IDs (as `crictl images` prints them) need at least this many hex digits.
MIN_SHORT_ID = 4

_T = TypeVar("_T")

# `platform.machine()` names -> OCI architecture and variant.
_ARCHITECTURES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    """The platform this node runs images for."""
    machine = platform.machine().lower()
    architecture, variant = _ARCHITECTURES.get(machine, (machine, ""))
    return Platform("linux", architecture, variant)


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


class _Shared(Generic[_T]):
    """One task shared by every caller that asks for the same thing (a pull of one reference,
    the download of one blob, the unpack of one layer). A caller that gives up (cancelled, e.g.
    at its gRPC deadline) leaves the others waiting; when the last one gives up, the work is
    cancelled too."""

    def __init__(self, work: Coroutine[Any, Any, _T], forget: Callable[[], None]) -> None:
        self.task: asyncio.Task[_T] = asyncio.ensure_future(work)
        self.waiters = 0
        self.abandoned = False  # cancelled by its last waiter: newcomers start afresh
        self.task.add_done_callback(lambda task: self._done(task, forget))

    @staticmethod
    def _done(task: asyncio.Task[_T], forget: Callable[[], None]) -> None:
        forget()
        if not task.cancelled():
            task.exception()  # retrieved here too, so a failure nobody awaits is not "lost"

    async def wait(self) -> _T:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.waiters == 1 and not self.task.done():
                self.abandoned = True
                self.task.cancel()
                # Waited for: its cleanup (a thread's unpack cannot be stopped, see `_unpack`)
                # is over before the caller reports, so a failed pull leaves nothing behind.
                await asyncio.wait([self.task])
            raise
        finally:
            self.waiters -= 1


def _share(
    flights: dict[Any, _Shared[_T]], key: Any, work: Callable[[], Coroutine[Any, Any, _T]]
) -> _Shared[_T]:
    flight = flights.get(key)
    if flight is None or flight.abandoned:

        def forget() -> None:
            if flights.get(key) is flight:
                del flights[key]

        flight = _Shared(work(), forget)
        flights[key] = flight
    return flight


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: a CRI error if any, else the first."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    return next((e for e in leaves if isinstance(e, CriError)), leaves[0])


class _Progress:
    """Per-layer download progress, logged at info level (bytes, rate)."""

    def __init__(self, image: str, descriptor: Descriptor, kind: str) -> None:
        self.image = image
        self.kind = kind
        self.descriptor = descriptor
        self.started = time.monotonic()
        self.logged = self.started
        self.bytes = 0

    def __call__(self, count: int) -> None:
        self.bytes += count
        now = time.monotonic()
        if now - self.logged >= PROGRESS_LOG_SECONDS:
            self.logged = now
            log.info(f"{self.kind} progress", **self.fields(now))

    def fields(self, now: float) -> dict[str, Any]:
        seconds = max(now - self.started, 1e-6)
        return {
            "image": self.image,
            "digest": self.descriptor.digest,
            "bytes": self.bytes,
            "total": self.descriptor.size,
            "seconds": round(seconds, 3),
            "rate_mib_s": round(self.bytes / MIB / seconds, 2),
        }


class _Holds:
    """Blobs and layers an unfinished pull relies on: garbage collection keeps them."""

    def __init__(self) -> None:
        self.blobs: Counter[str] = Counter()
        self.layers: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self) -> Iterator[_Hold]:
        hold = _Hold(self)
        try:
            yield hold
        finally:
            self.blobs.subtract(hold.blobs)
            self.layers.subtract(hold.layers)
            self.blobs = +self.blobs  # drop zero counts
            self.layers = +self.layers


class _Hold:
    def __init__(self, holds: _Holds) -> None:
        self._holds = holds
        self.blobs: list[str] = []
        self.layers: list[str] = []

    def blob(self, digest: str) -> None:
        self.blobs.append(digest)
        self._holds.blobs[digest] += 1

    def layer(self, chain_id: str) -> None:
        self.layers.append(chain_id)
        self._holds.layers[chain_id] += 1


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
        self._platform = platform or host_platform()
        self._pinned = self._normalise_pinned(config.images.pinned)
        self._downloads = asyncio.Semaphore(config.images.max_concurrent_downloads)
        self._unpacks = asyncio.Semaphore(config.images.max_concurrent_downloads)
        self._layer_limits = LayerLimits(
            config.images.max_layer_bytes, config.images.max_layer_inodes
        )
        self._lock = asyncio.Lock()  # serialises changes to the metadata
        self._trash_lock = asyncio.Lock()
        self._pulls: dict[tuple[str, str], _Shared[str]] = {}
        self._blob_flights: dict[str, _Shared[None]] = {}
        self._layer_flights: dict[str, _Shared[tuple[int, int]]] = {}
        self._holds = _Holds()
        self._runtime_configs: dict[str, RuntimeConfig] = {}
        # Store writes get a thread of their own: release_layers is awaited from threads of
        # the default pool (RemovePodSandbox), so it must not need a free thread of that pool
        # (50 concurrent removes took them all and waited out their 60 s timeout).
        self._store_io = concurrent.futures.ThreadPoolExecutor(1, "image-store")
        # The daemon's metrics hooks: bytes received for blobs, and each finished pull's seconds.
        self.on_downloaded: Callable[[int], None] = lambda count: None
        self.on_pulled: Callable[[float], None] = lambda seconds: None
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
        self._state = state
        by_tag: dict[str, str] = {}
        by_digest: dict[str, str] = {}
        layer_stats: dict[str, tuple[int, int]] = {}
        blob_sizes: dict[str, int] = {}
        for record in state.images.values():
            by_tag.update((tag, record.id) for tag in record.repo_tags)
            by_digest.update((digest, record.id) for digest in record.repo_digests)
            blob_sizes.update(record.blobs)
            layer_stats.update(
                (layer.chain_id, (layer.unpacked_bytes, layer.inodes)) for layer in record.layers
            )
        self._by_tag, self._by_digest, self._layer_stats = by_tag, by_digest, layer_stats
        self._usage = (
            sum(blob_sizes.values()) + sum(size for size, _ in layer_stats.values()),
            len(blob_sizes) + sum(inodes for _, inodes in layer_stats.values()),
        )
        for image_id in list(self._runtime_configs):
            if image_id not in state.images:
                del self._runtime_configs[image_id]

    def _kept(self) -> tuple[set[str], set[str]]:
        """Blobs and layers that must stay: an image's, a container lease's, a pull's."""
        blobs = set(self._holds.blobs)
        layers = set(self._holds.layers)
        for record in self._state.images.values():
            blobs.update(record.blobs)
            layers.update(layer.chain_id for layer in record.layers)
        for chains in self._state.leases.values():
            layers.update(chains)
        return blobs, layers

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

    def _resolve(self, image: str) -> ImageRecord | None:
        """An image by ID, short ID, repo tag, repo digest or any reference that normalises
        to one (`busybox` is `docker.io/library/busybox:latest`), as containerd resolves it.
        A malformed reference resolves to nothing."""
        images = self._state.images
        image_id = parse_image_id(image)
        if image_id is not None and image_id in images:
            return images[image_id]
        with contextlib.suppress(InvalidArgument):
            ref = parse_reference(image)
            if ref.digest:
                found = self._by_digest.get(ref.with_digest(ref.digest))
            else:
                found = self._by_tag.get(str(ref))
            if found is not None:
                return images[found]
        prefix = image.removeprefix("sha256:")
        if len(prefix) >= MIN_SHORT_ID and all(c in "0123456789abcdef" for c in prefix):
            matches = [r for key, r in images.items() if key.startswith(f"sha256:{prefix}")]
            if len(matches) == 1:
                return matches[0]
        return None

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
        record = self._resolve(image)
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
        records = list(self._state.images.values())
        if image:
            if explicit_tag_or_digest(image) or parse_image_id(image) is not None:
                found = self._resolve(image)
                records = [found] if found is not None else []
            else:
                try:
                    name = parse_reference(image).name
                except InvalidArgument:
                    return []
                records = [
                    r
                    for r in records
                    if any(
                        n.rpartition("@" if "@" in n else ":")[0] == name
                        for n in (*r.repo_tags, *r.repo_digests)
                    )
                ]
        return [self._view(record) for record in sorted(records, key=lambda r: r.id)]

    def fs_usage(self) -> FsUsage:
        """Bytes and inodes the image store uses: blobs plus unpacked layers, kept up to date
        on every change (kubelet polls this), not measured by walking the disk."""
        used_bytes, inodes = self._usage
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
        record = self._resolve(image)
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
        async with self._lock:
            rootfs = self.rootfs(image)
            record = self._state.images[rootfs.image_id]
            leases = dict(self._state.leases)
            leases[owner] = tuple(layer.chain_id for layer in record.layers)
            await self._save(dataclasses.replace(self._state, leases=leases))
        return rootfs

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
            await self._save(dataclasses.replace(self._state, leases=leases))
            await self._collect_garbage()

    # -- remove --

    async def remove(self, image: str) -> None:
        """Removes the image `image` names, with all its tags and digests, and collects what
        only it kept. Unknown images are fine (idempotent); pinned images are removed too (the
        CRI: pinning is a hint to kubelet's GC, not a refusal)."""
        async with self._lock:
            record = self._resolve(image)
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
        ref = pull_reference(image)
        key = (str(ref), credentials.fingerprint() if credentials else "")
        flight = _share(self._pulls, key, lambda: self._pull(ref, credentials))
        return await flight.wait()

    async def _pull(self, ref: Reference, credentials: Credentials | None) -> str:
        started = time.monotonic()
        log.info("pulling image", image=str(ref))
        endpoints = self._registry.endpoints(ref, credentials)
        with self._holds.hold() as hold:
            endpoint, top = await self._registry.fetch_manifest(ref, endpoints)
            # Blobs come from the endpoint that answered first, then the others in order.
            order = (endpoint, *(e for e in endpoints if e != endpoint))
            hold.blob(top.digest)
            parsed = parse_manifest(top.data, top.media_type)
            index_digests: tuple[str, ...] = ()
            index_sizes: tuple[int, ...] = ()
            manifest_fetched = top
            if isinstance(parsed, Index):
                chosen = select_platform(parsed, self._platform)
                hold.blob(chosen.digest)
                _, manifest_fetched = await self._registry.fetch_manifest(
                    ref, order, digest=chosen.digest, size=chosen.size
                )
                parsed = parse_manifest(manifest_fetched.data, manifest_fetched.media_type)
                if not isinstance(parsed, Manifest):
                    raise FailedPrecondition(
                        f"pull {ref}: index entry {chosen.digest} is an index, not a manifest"
                    )
                index_digests, index_sizes = (top.digest,), (len(top.data),)
            manifest = parsed
            hold.blob(manifest.config.digest)
            for layer in manifest.layers:
                hold.blob(layer.digest)
            await self._ensure_blob(ref, order, manifest.config, "config")
            image_config = parse_image_config(self._store.read_blob(manifest.config.digest))
            check_layers_match(manifest, image_config)
            if image_config.platform.architecture not in ("", self._platform.architecture):
                # A single-platform image for another architecture: pulled (containerd does
                # too), but its containers will fail with "exec format error"; say so now.
                log.warning(
                    "image is for another platform",
                    image=str(ref),
                    image_platform=str(image_config.platform),
                    host_platform=str(self._platform),
                )
            chains = chain_ids(image_config.diff_ids)
            for chain in chains:
                hold.layer(chain)
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(
                            self._ensure_layer(ref, order, descriptor, diff_id, chain)
                        )
                        for descriptor, diff_id, chain in zip(
                            manifest.layers, image_config.diff_ids, chains, strict=True
                        )
                    ]
            except BaseExceptionGroup as failures:
                # The first layer's error is the pull's; the others were cancelled with it.
                raise _first_error(failures) from None
            layers = tuple(task.result() for task in tasks)
            for fetched in (top, manifest_fetched):
                if not self._store.has_blob(fetched.digest):
                    await self._store.put_blob(fetched.digest, fetched.data)
            record = ImageRecord(
                id=manifest.config.digest,
                repo_tags=(ref.tagged(),) if ref.tag else (),
                repo_digests=(ref.with_digest(top.digest),),
                manifest_digest=manifest_fetched.digest,
                manifest_size=len(manifest_fetched.data),
                index_digests=index_digests,
                index_sizes=index_sizes,
                config_size=manifest.config.size,
                layers=layers,
                user=image_config.runtime.user,
            )
            await self._commit(record)
        self.on_pulled(time.monotonic() - started)
        log.info(
            "pulled image",
            image=str(ref),
            id=record.id,
            layers=len(layers),
            bytes=record.size,
            seconds=round(time.monotonic() - started, 3),
        )
        return record.id

    async def _commit(self, record: ImageRecord) -> None:
        """Makes a pulled image visible (one atomic metadata write): merges names into an image
        already known by this ID, and takes the tag away from any other image that had it."""
        async with self._lock:
            images = dict(self._state.images)
            for tag in record.repo_tags:
                for other in list(images.values()):
                    if other.id != record.id and tag in other.repo_tags:
                        images[other.id] = dataclasses.replace(
                            other, repo_tags=tuple(t for t in other.repo_tags if t != tag)
                        )
            existing = images.get(record.id)
            if existing is not None:
                indexes = dict(zip(existing.index_digests, existing.index_sizes, strict=True))
                indexes.update(zip(record.index_digests, record.index_sizes, strict=True))
                record = dataclasses.replace(
                    record,
                    repo_tags=tuple(sorted({*existing.repo_tags, *record.repo_tags})),
                    repo_digests=tuple(sorted({*existing.repo_digests, *record.repo_digests})),
                    index_digests=tuple(indexes),
                    index_sizes=tuple(indexes.values()),
                )
            images[record.id] = record
            await self._save(dataclasses.replace(self._state, images=images))

    async def _ensure_blob(
        self,
        ref: Reference,
        endpoints: Sequence[Endpoint],
        descriptor: Descriptor,
        kind: str = "layer",
    ) -> None:
        if self._store.has_blob(descriptor.digest):
            return
        flight = _share(
            self._blob_flights,
            descriptor.digest,
            lambda: self._download(ref, endpoints, descriptor, kind),
        )
        await flight.wait()

    async def _download(
        self, ref: Reference, endpoints: Sequence[Endpoint], descriptor: Descriptor, kind: str
    ) -> None:
        async with self._downloads:
            if self._store.has_blob(descriptor.digest):
                return
            progress = _Progress(str(ref), descriptor, kind)
            try:
                endpoint = await self._registry.fetch_blob(
                    ref,
                    endpoints,
                    descriptor,
                    lambda: self._store.blob_writer(descriptor.digest, descriptor.size),
                    progress,
                )
            finally:  # bytes of a failed download were received too
                self.on_downloaded(progress.bytes)
            log.info(
                f"{kind} downloaded", endpoint=str(endpoint), **progress.fields(time.monotonic())
            )

    async def _ensure_layer(
        self,
        ref: Reference,
        endpoints: Sequence[Endpoint],
        descriptor: Descriptor,
        diff_id: str,
        chain_id: str,
    ) -> LayerRecord:
        await self._ensure_blob(ref, endpoints, descriptor)
        stats = self._layer_stats.get(chain_id)
        if stats is None or not self._store.has_layer(chain_id):
            if self._store.has_layer(chain_id):
                stats = await asyncio.to_thread(measure_tree, self._store.layer_path(chain_id))
            else:
                flight = _share(
                    self._layer_flights,
                    chain_id,
                    lambda: self._unpack(str(ref), descriptor, diff_id, chain_id),
                )
                stats = await flight.wait()
        return LayerRecord(
            digest=descriptor.digest,
            size=descriptor.size,
            media_type=descriptor.media_type,
            diff_id=diff_id,
            chain_id=chain_id,
            unpacked_bytes=stats[0],
            inodes=stats[1],
        )

    async def _unpack(
        self, image: str, descriptor: Descriptor, diff_id: str, chain_id: str
    ) -> tuple[int, int]:
        async with self._unpacks:
            started = time.monotonic()
            work = asyncio.ensure_future(
                asyncio.to_thread(
                    unpack_layer,
                    self._store.blob_path(descriptor.digest),
                    self._store.layer_path(chain_id),
                    diff_id,
                    layer=descriptor.digest,
                    limits=self._layer_limits,
                )
            )
            try:
                result = await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread runs on whatever we do: it ends with its layer in place or its
                # temporary dir removed, and this task ends after it (no `.tmp-*` outlives
                # a failed or cancelled pull).
                await asyncio.wait([work])
                raise
            log.info(
                "layer unpacked",
                image=image,
                digest=descriptor.digest,
                chain_id=chain_id,
                bytes=result.unpacked_bytes,
                inodes=result.inodes,
                seconds=round(time.monotonic() - started, 3),
            )
            return result.unpacked_bytes, result.inodes
