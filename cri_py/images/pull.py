"""Pulling: an image's manifests and blobs from the registry into the content store, and its
layers unpacked, each blob downloaded and each layer unpacked once however many pulls want it.

`Puller` owns the transfer: platform selection, download and unpack concurrency, work shared
between pulls (`_Shared`), progress logs and the holds that keep an unfinished pull's blobs and
layers from garbage collection. Naming the result and making it visible is the service's
(`service.ImageService`, through the `commit` callback); the HTTP is `registry`'s, the bytes on
disk `store`'s, the tar `unpack`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, Generic, TypeVar

from cri_py.config import ImagesConfig
from cri_py.errors import CriError, FailedPrecondition
from cri_py.images.endpoints import Credentials, Endpoint
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
)
from cri_py.images.reference import Reference, pull_reference
from cri_py.images.registry import RegistryClient
from cri_py.images.store import ContentStore, ImageRecord, LayerRecord, measure_tree
from cri_py.images.unpack import LayerLimits, unpack_layer
from cri_py.log import get_logger

# The service's logger: pull and progress lines keep the name they always had.
log = get_logger("cri_py.images")

# Progress lines for a long download come at most this often (plus one at the end).
PROGRESS_LOG_SECONDS = 10.0
MIB = 1024 * 1024

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


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
    def hold(self) -> Iterator[Hold]:
        hold = Hold(self)
        try:
            yield hold
        finally:
            self.blobs.subtract(hold.blobs)
            self.layers.subtract(hold.layers)
            self.blobs = +self.blobs  # drop zero counts
            self.layers = +self.layers


class Hold:
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


class Puller:
    """Pulls images into `store`; runs on the service's event loop.

    `layer_stats` gives the recorded (bytes, inodes) of an unpacked layer the service knows;
    `commit` makes a pulled image visible; `on_downloaded` and `on_pulled` are the metrics hooks
    (bytes received for blobs, each finished pull's seconds).
    """

    def __init__(
        self,
        store: ContentStore,
        registry: RegistryClient,
        images: ImagesConfig,
        platform: Platform,
        *,
        layer_stats: Callable[[str], tuple[int, int] | None],
        commit: Callable[[ImageRecord], Awaitable[None]],
        on_downloaded: Callable[[int], None],
        on_pulled: Callable[[float], None],
    ) -> None:
        self._store = store
        self._registry = registry
        self._platform = platform
        self._downloads = asyncio.Semaphore(images.max_concurrent_downloads)
        self._unpacks = asyncio.Semaphore(images.max_concurrent_downloads)
        self._layer_limits = LayerLimits(images.max_layer_bytes, images.max_layer_inodes)
        self._layer_stats = layer_stats
        self._commit = commit
        self._on_downloaded = on_downloaded
        self._on_pulled = on_pulled
        self._pulls: dict[tuple[str, str], _Shared[str]] = {}
        self._blob_flights: dict[str, _Shared[None]] = {}
        self._layer_flights: dict[str, _Shared[tuple[int, int]]] = {}
        self._holds = _Holds()

    def held(self) -> tuple[set[str], set[str]]:
        """The blobs and layers (chain IDs) unfinished pulls and imports rely on."""
        return set(self._holds.blobs), set(self._holds.layers)

    @property
    def platform(self) -> Platform:
        """The platform pulls (and imports) choose from an index."""
        return self._platform

    def hold(self) -> contextlib.AbstractContextManager[Hold]:
        """Keeps the blobs and layers registered on the hold from garbage collection until
        the block ends (an import's, while it is not yet committed)."""
        return self._holds.hold()

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
                raise first_error(failures) from None
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
        self._on_pulled(time.monotonic() - started)
        log.info(
            "pulled image",
            image=str(ref),
            id=record.id,
            layers=len(layers),
            bytes=record.size,
            seconds=round(time.monotonic() - started, 3),
        )
        return record.id

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
                self._on_downloaded(progress.bytes)
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
        return await self.layer_record(str(ref), descriptor, diff_id, chain_id)

    async def layer_record(
        self, image: str, descriptor: Descriptor, diff_id: str, chain_id: str
    ) -> LayerRecord:
        """The layer of the blob `descriptor` (already in the store), unpacked unless it is
        already: one unpack per chain ID however many pulls and imports want it, under the
        same limits. The caller holds the blob and the chain ID (`hold`)."""
        stats = self._layer_stats(chain_id)
        if stats is None or not self._store.has_layer(chain_id):
            if self._store.has_layer(chain_id):
                stats = await asyncio.to_thread(measure_tree, self._store.layer_path(chain_id))
            else:
                flight = _share(
                    self._layer_flights,
                    chain_id,
                    lambda: self._unpack(image, descriptor, diff_id, chain_id),
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
