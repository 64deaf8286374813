"""The image catalog: which image a name resolves to, read from the store's state.

Pure: a `Catalog` is built from one `StoreState` and answers lookups (by ID, short ID, repo tag,
repo digest or any reference that normalises to one), ListImages' filter, the usage totals and
what garbage collection must keep; `with_pulled` merges a pulled image's names into the known
images. Persisting, collecting and reading blobs are the service's (`service.ImageService`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from cri_py.errors import InvalidArgument
from cri_py.images.reference import explicit_tag_or_digest, parse_image_id, parse_reference
from cri_py.images.store import ImageRecord, StoreState

# Short image IDs (as `crictl images` prints them) need at least this many hex digits.
MIN_SHORT_ID = 4


@dataclass(frozen=True)
class Catalog:
    """The images of one `StoreState`, indexed by name. Build it with `Catalog.of`."""

    state: StoreState
    by_tag: Mapping[str, str]  # repo tag -> image ID
    by_digest: Mapping[str, str]  # repo digest -> image ID
    layer_stats: Mapping[str, tuple[int, int]]  # chain ID -> (unpacked bytes, inodes)
    usage: tuple[int, int]  # (bytes, inodes) of every blob and unpacked layer

    @classmethod
    def of(cls, state: StoreState) -> Catalog:
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
        usage = (
            sum(blob_sizes.values()) + sum(size for size, _ in layer_stats.values()),
            len(blob_sizes) + sum(inodes for _, inodes in layer_stats.values()),
        )
        return cls(state, by_tag, by_digest, layer_stats, usage)

    def resolve(self, image: str) -> ImageRecord | None:
        """An image by ID, short ID, repo tag, repo digest or any reference that normalises
        to one (`busybox` is `docker.io/library/busybox:latest`), as containerd resolves it.
        A malformed reference resolves to nothing."""
        images = self.state.images
        image_id = parse_image_id(image)
        if image_id is not None and image_id in images:
            return images[image_id]
        with contextlib.suppress(InvalidArgument):
            ref = parse_reference(image)
            if ref.digest:
                found = self.by_digest.get(ref.with_digest(ref.digest))
            else:
                found = self.by_tag.get(str(ref))
            if found is not None:
                return images[found]
        prefix = image.removeprefix("sha256:")
        if len(prefix) >= MIN_SHORT_ID and all(c in "0123456789abcdef" for c in prefix):
            matches = [r for key, r in images.items() if key.startswith(f"sha256:{prefix}")]
            if len(matches) == 1:
                return matches[0]
        return None

    def select(self, image: str = "") -> list[ImageRecord]:
        """Every image, or those `image` selects: with a tag, digest or ID, the one image it
        names; a bare repository name (`busybox`) selects every image of that repository.
        Sorted by ID."""
        records = list(self.state.images.values())
        if image:
            if explicit_tag_or_digest(image) or parse_image_id(image) is not None:
                found = self.resolve(image)
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
        return sorted(records, key=lambda r: r.id)

    def kept(self, blobs: Iterable[str], layers: Iterable[str]) -> tuple[set[str], set[str]]:
        """Blobs and layers that must stay: an image's, a container lease's, and the `blobs`
        and `layers` given (an unfinished pull's)."""
        kept_blobs = set(blobs)
        kept_layers = set(layers)
        for record in self.state.images.values():
            kept_blobs.update(record.blobs)
            kept_layers.update(layer.chain_id for layer in record.layers)
        for chains in self.state.leases.values():
            kept_layers.update(chains)
        return kept_blobs, kept_layers


def with_pulled(images: Mapping[str, ImageRecord], record: ImageRecord) -> dict[str, ImageRecord]:
    """`images` with a pulled image added: its names merge into an image already known by this
    ID, and its tag is taken away from any other image that had it."""
    merged = dict(images)
    for tag in record.repo_tags:
        for other in list(merged.values()):
            if other.id != record.id and tag in other.repo_tags:
                merged[other.id] = replace(
                    other, repo_tags=tuple(t for t in other.repo_tags if t != tag)
                )
    existing = merged.get(record.id)
    if existing is not None:
        indexes = dict(zip(existing.index_digests, existing.index_sizes, strict=True))
        indexes.update(zip(record.index_digests, record.index_sizes, strict=True))
        record = replace(
            record,
            repo_tags=tuple(sorted({*existing.repo_tags, *record.repo_tags})),
            repo_digests=tuple(sorted({*existing.repo_digests, *record.repo_digests})),
            index_digests=tuple(indexes),
            index_sizes=tuple(indexes.values()),
        )
    merged[record.id] = record
    return merged
