"""Importing an image archive: the images of a staged archive (`archive.py`) into the store,
through the pull's own machinery: its platform choice, its content store, its layer unpack
(one per chain ID, the same limits and checks, diff IDs verified) and its holds against
garbage collection. Names follow `ctr images import` (containerd's annotation, else OCI's
ref name with an `import-<date>` prefix when it is only a tag; `--digests` adds
`import-<date>@<digest>`).

What this module leaves to others: reading the tar (`archive`), committing the records in one
metadata write and collecting what a failed import left (`service.ImageService`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.images.archive import (
    ArchiveEntry,
    ArchiveLimits,
    StagedArchive,
    stage_archive,
    top_level,
)
from cri_py.images.manifest import (
    INDEX_TYPES,
    MAX_CONFIG_BYTES,
    Descriptor,
    Manifest,
    Platform,
    chain_ids,
    check_layers_match,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from cri_py.images.pull import Hold, Puller, first_error
from cri_py.images.reference import pull_reference, validate_digest
from cri_py.images.store import ContentStore, ImageRecord, LayerRecord
from cri_py.log import get_logger

log = get_logger("cri_py.images")

# Indexes inside indexes are followed this deep (Docker's own save nests one level).
MAX_INDEX_DEPTH = 4


@dataclass(frozen=True)
class ImportOptions:
    """`ctr images import` flags cri-py honours. `date` is the day (YYYY-MM-DD, the caller's
    local time, as ctr takes it) in the `import-<date>` names."""

    date: str
    all_platforms: bool = False
    digests: bool = False


@dataclass(frozen=True)
class ImportedImage:
    """One name an import gave (or one nameless image), and what it points at."""

    name: str  # "" for an image the archive carries without a name
    digest: str  # the archive entry's manifest or index
    image_id: str


def entry_names(entry: ArchiveEntry, options: ImportOptions) -> tuple[str, ...]:
    """The names `ctr images import` gives an archive entry: containerd's annotation, else
    OCI's ref name (a bare tag gets the `import-<date>` repository); with `digests`, also
    `import-<date>@<digest>`."""
    prefix = f"import-{options.date}"
    names = []
    name = entry.name
    if not name and entry.ref_name:
        ref = entry.ref_name
        name = ref if any(c in ref for c in "/:@") else f"{prefix}:{ref}"
    if name:
        names.append(name)
    if options.digests:
        names.append(f"{prefix}@{entry.descriptor.digest}")
    return tuple(names)


def split_names(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(repo tags, repo digests) of image names, normalised as a pull normalises them."""
    tags: list[str] = []
    digests: list[str] = []
    for name in names:
        try:
            ref = pull_reference(name)
        except InvalidArgument as e:
            raise FailedPrecondition(f"archive: image name {name!r}: {e}") from None
        if ref.digest:
            digests.append(ref.with_digest(ref.digest))
        else:
            tags.append(ref.tagged())
    return tuple(dict.fromkeys(tags)), tuple(dict.fromkeys(digests))


@dataclass(frozen=True)
class _Resolved:
    """An entry down to the platform manifest: the indexes passed through, top first."""

    indexes: tuple[tuple[Descriptor, bytes], ...]
    manifest: Descriptor
    data: bytes


def _resolve(
    staged: StagedArchive, descriptor: Descriptor, platform: Platform, depth: int = 0
) -> _Resolved:
    """The manifest a pull would choose for `platform` from what `descriptor` names."""
    data = staged.document(descriptor, "manifest")
    parsed = parse_manifest(data, descriptor.media_type)
    if isinstance(parsed, Manifest):
        return _Resolved((), descriptor, data)
    try:
        chosen = select_platform(parsed, platform)
    except FailedPrecondition as no_match:
        nested = [m for m in parsed.manifests if m.media_type in INDEX_TYPES]
        if depth >= MAX_INDEX_DEPTH or not nested:
            raise
        for inner in nested:
            try:
                found = _resolve(staged, inner, platform, depth + 1)
            except FailedPrecondition:
                continue
            return _Resolved(((descriptor, data), *found.indexes), found.manifest, found.data)
        raise no_match from None
    return _Resolved(
        ((descriptor, data),), chosen, staged.document(chosen, f"manifest for {platform}")
    )


def _descriptors(doc: Any, key: str) -> list[Descriptor]:
    """The descriptors under `key` of a manifest or index read loosely: for completeness
    checks of platforms cri-py does not keep (attestations and foreign layer types too)."""
    value = doc.get(key) if isinstance(doc, dict) else None
    items = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
    found = []
    for item in items:
        if not isinstance(item, dict):
            raise FailedPrecondition(f"archive: a {key} entry is not a descriptor")
        digest, size = item.get("digest"), item.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
            raise FailedPrecondition(f"archive: a {key} descriptor without digest or size")
        try:
            validate_digest(digest)
        except InvalidArgument as e:
            raise FailedPrecondition(f"archive: {e}") from None
        found.append(Descriptor(str(item.get("mediaType", "")), digest, size))
    return found


def check_complete(staged: StagedArchive, descriptor: Descriptor, depth: int = 0) -> None:
    """Every blob reachable from `descriptor`, every platform, is in the archive and matches
    its digest: what `ctr images import --all-platforms` requires."""
    if depth > MAX_INDEX_DEPTH:
        raise FailedPrecondition(f"archive: indexes nested deeper than {MAX_INDEX_DEPTH}")
    try:
        doc = json.loads(staged.document(descriptor, "manifest"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FailedPrecondition(f"archive: manifest {descriptor.digest}: {e}") from None
    for child in _descriptors(doc, "manifests"):
        check_complete(staged, child, depth + 1)
    for blob in (*_descriptors(doc, "config"), *_descriptors(doc, "layers")):
        staged.blob(blob, "blob")


class Importer:
    """Imports staged archives into `store`, sharing `puller`'s unpacks, platform and holds."""

    def __init__(self, store: ContentStore, puller: Puller, limits: ArchiveLimits) -> None:
        self._store = store
        self._puller = puller
        self._limits = limits

    async def import_archive(
        self,
        stream: IO[bytes],
        options: ImportOptions,
        commit: Callable[[Sequence[ImageRecord]], Awaitable[None]],
    ) -> tuple[ImportedImage, ...]:
        """Reads the archive from `stream` and imports every image in it, or none: the
        records are handed to `commit` together, while the blobs and layers are still held."""
        staged = await self._stage(stream)
        try:
            entries = top_level(staged)
            if not entries:
                raise FailedPrecondition("archive: it holds no image")
            with self._puller.hold() as hold:
                records: list[ImageRecord] = []
                imported: list[ImportedImage] = []
                done: dict[str, ImageRecord] = {}  # by the entry's digest
                for entry in entries:
                    names = entry_names(entry, options)
                    record = done.get(entry.descriptor.digest)
                    if record is None:
                        if options.all_platforms:
                            check_complete(staged, entry.descriptor)
                        record = await self._import_entry(staged, entry, hold)
                        done[entry.descriptor.digest] = record
                    tags, digests = split_names(names)
                    records.append(replace(record, repo_tags=tags, repo_digests=digests))
                    imported += [
                        ImportedImage(name, entry.descriptor.digest, record.id)
                        for name in names or ("",)
                    ]
                await commit(records)
        finally:
            staged.close()
        return tuple(imported)

    async def _stage(self, stream: IO[bytes]) -> StagedArchive:
        work = asyncio.ensure_future(
            asyncio.to_thread(stage_archive, stream, self._store.ingest_dir, self._limits)
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The thread reads on: wait for it so that its staged files are removed.
            await asyncio.wait([work])
            if not work.cancelled() and work.exception() is None:
                work.result().close()
            raise

    async def _import_entry(
        self, staged: StagedArchive, entry: ArchiveEntry, hold: Hold
    ) -> ImageRecord:
        label = entry.name or entry.ref_name or entry.descriptor.digest
        try:
            return await self._import_resolved(
                staged, label, _resolve(staged, entry.descriptor, self._puller.platform), hold
            )
        except FailedPrecondition as e:
            raise FailedPrecondition(f"import {label}: {e}") from None

    async def _import_resolved(
        self, staged: StagedArchive, label: str, resolved: _Resolved, hold: Hold
    ) -> ImageRecord:
        manifest = parse_manifest(resolved.data, resolved.manifest.media_type)
        if not isinstance(manifest, Manifest):
            raise FailedPrecondition(f"{resolved.manifest.digest} is an index, not a manifest")
        if manifest.config.size > MAX_CONFIG_BYTES:
            raise FailedPrecondition(
                f"config {manifest.config.digest} declares {manifest.config.size} bytes, more "
                f"than the {MAX_CONFIG_BYTES} allowed"
            )
        if self._store.has_blob(manifest.config.digest):
            config_data = self._store.read_blob(manifest.config.digest)
        else:
            config_data = staged.blob(manifest.config, "config").path.read_bytes()
        image_config = parse_image_config(config_data)
        check_layers_match(manifest, image_config)
        host = self._puller.platform
        if image_config.platform.architecture not in ("", host.architecture):
            log.warning(
                "image is for another platform",
                image=label,
                image_platform=str(image_config.platform),
                host_platform=str(host),
            )
        chains = chain_ids(image_config.diff_ids)
        # Blobs first (each verified against its descriptor), held, then the layers unpacked.
        for descriptor in (manifest.config, *manifest.layers):
            await self._keep_blob(staged, descriptor, hold)
        for descriptor, data in (*resolved.indexes, (resolved.manifest, resolved.data)):
            hold.blob(descriptor.digest)
            if not self._store.has_blob(descriptor.digest):
                await self._store.put_blob(descriptor.digest, data)
        for chain in chains:
            hold.layer(chain)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._puller.layer_record(label, *layer))
                    for layer in zip(manifest.layers, image_config.diff_ids, chains, strict=True)
                ]
        except BaseExceptionGroup as failures:
            raise first_error(failures) from None
        layers: tuple[LayerRecord, ...] = tuple(task.result() for task in tasks)
        return ImageRecord(
            id=manifest.config.digest,
            repo_tags=(),
            repo_digests=(),
            manifest_digest=resolved.manifest.digest,
            manifest_size=len(resolved.data),
            index_digests=tuple(d.digest for d, _ in resolved.indexes),
            index_sizes=tuple(len(data) for _, data in resolved.indexes),
            config_size=manifest.config.size,
            layers=layers,
            user=image_config.runtime.user,
        )

    async def _keep_blob(self, staged: StagedArchive, descriptor: Descriptor, hold: Hold) -> None:
        """Moves the archive's blob into the store (after checking it against `descriptor`),
        unless the store has it already; held from here on."""
        hold.blob(descriptor.digest)
        if self._store.has_blob(descriptor.digest):
            return
        staged_file = staged.blob(descriptor, "blob")
        await self._store.adopt_blob(descriptor.digest, staged_file.path)
