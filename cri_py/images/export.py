"""Exporting images: an OCI image layout as a tar stream, with Docker's `manifest.json` beside
it (as Docker 25's `docker save` writes), so that `cri-py images import`, `ctr images import`
and `docker load` all read it.

Each image is written as its platform manifest (the one this node keeps), named in `index.json`
by containerd's and OCI's annotations; blobs are copied from the store as they are (layers stay
compressed). Which images and names to write, and keeping their blobs from garbage collection
while they are read, are the service's (`service.ImageService.export`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cri_py.images.archive import (
    CONTAINERD_NAME_ANNOTATION,
    DOCKER_MANIFEST_FILE,
    OCI_INDEX_FILE,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
    OCI_REF_NAME_ANNOTATION,
)
from cri_py.images.manifest import OCI_INDEX, parse_manifest
from cri_py.images.reference import DEFAULT_DOMAIN, OFFICIAL_PREFIX, parse_reference
from cri_py.images.store import ContentStore, ImageRecord

COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExportedImage:
    """An image to write and the repo tags to name it by (none: written nameless)."""

    record: ImageRecord
    names: tuple[str, ...]


def familiar_name(name: str) -> str:
    """Docker's short form of a normalised name: `docker.io/library/busybox:1` is
    `busybox:1`, `docker.io/team/app:1` is `team/app:1`; other registries keep theirs."""
    ref = parse_reference(name)
    path = ref.path
    if ref.domain == DEFAULT_DOMAIN:
        text = path.removeprefix(OFFICIAL_PREFIX)
    else:
        text = f"{ref.domain}/{path}"
    return f"{text}:{ref.tag}" if ref.tag else text


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def write_archive(out: IO[bytes], images: Sequence[ExportedImage], store: ContentStore) -> None:
    """Writes the images to `out` as one tar (blocking; `out` may be a pipe)."""
    index_entries: list[dict[str, Any]] = []
    docker_images: list[dict[str, Any]] = []
    blobs: dict[str, None] = {}
    for image in images:
        record = image.record
        manifest = parse_manifest(store.read_blob(record.manifest_digest))
        config = json.loads(store.read_blob(record.id))
        descriptor: dict[str, Any] = {
            "mediaType": manifest.media_type,
            "digest": record.manifest_digest,
            "size": record.manifest_size,
        }
        if config.get("os") and config.get("architecture"):
            platform = {"architecture": config["architecture"], "os": config["os"]}
            if config.get("variant"):
                platform["variant"] = config["variant"]
            descriptor["platform"] = platform
        for name in image.names or ("",):
            entry = dict(descriptor)
            if name:
                entry["annotations"] = {
                    CONTAINERD_NAME_ANNOTATION: name,
                    OCI_REF_NAME_ANNOTATION: parse_reference(name).tag,
                }
            index_entries.append(entry)
        docker_images.append(
            {
                "Config": _blob_name(record.id),
                "RepoTags": [familiar_name(name) for name in image.names],
                "Layers": [_blob_name(layer.digest) for layer in record.layers],
            }
        )
        for digest in (record.manifest_digest, record.id, *(la.digest for la in record.layers)):
            blobs[digest] = None
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, OCI_LAYOUT_FILE, json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        _add_dir(tar, "blobs")
        for algorithm in sorted({digest.partition(":")[0] for digest in blobs}):
            _add_dir(tar, f"blobs/{algorithm}")
        for digest in blobs:
            _add_file(tar, _blob_name(digest), store.blob_path(digest))
        _add_bytes(tar, OCI_INDEX_FILE, json.dumps(index))
        _add_bytes(tar, DOCKER_MANIFEST_FILE, json.dumps(docker_images))


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0  # reproducible: the same images give the same tar
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))


def _add_bytes(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tar.addfile(_info(name, tarfile.REGTYPE, 0o644, size), f)
