"""Image archives built in memory for the import tests: OCI layouts and `docker save` tarballs,
honest or hostile (members added, replaced or linked by hand)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from .fakes import Image, sha256


@dataclass
class Tar:
    """Members in the order given: (name, data) for files, (name, None, target) for links."""

    members: list[tuple[str, bytes | None, str, bytes]] = field(default_factory=list)

    def file(self, name: str, data: bytes) -> Tar:
        self.members.append((name, data, "", tarfile.REGTYPE))
        return self

    def symlink(self, name: str, target: str) -> Tar:
        self.members.append((name, None, target, tarfile.SYMTYPE))
        return self

    def hardlink(self, name: str, target: str) -> Tar:
        self.members.append((name, None, target, tarfile.LNKTYPE))
        return self

    def drop(self, name: str) -> Tar:
        self.members = [m for m in self.members if m[0] != name]
        return self

    def replace(self, name: str, data: bytes) -> Tar:
        self.members = [(n, data if n == name else d, t, k) for n, d, t, k in self.members]
        return self

    def build(self, compress: bool = False) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data, target, kind in self.members:
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                info.mode = 0o644
                if data is not None:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(info)
        return gzip.compress(out.getvalue(), mtime=0) if compress else out.getvalue()


def blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/")


def add_image_blobs(tar: Tar, image: Image, seen: set[str]) -> None:
    for digest, data in {image.digest: image.manifest, **image.blobs}.items():
        if digest not in seen:
            seen.add(digest)
            tar.file(blob_name(digest), data)


def index_entry(
    media_type: str, data: bytes, name: str = "", ref_name: str = ""
) -> dict[str, object]:
    entry: dict[str, object] = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    annotations = {}
    if name:
        annotations["io.containerd.image.name"] = name
    if ref_name:
        annotations["org.opencontainers.image.ref.name"] = ref_name
    if annotations:
        entry["annotations"] = annotations
    return entry


def oci_layout(
    images: Sequence[tuple[Image, str, str]],
    *,
    extra: Sequence[tuple[str, bytes]] = (),
    entries: Sequence[dict[str, object]] = (),
) -> Tar:
    """An OCI layout of `images` as (image, containerd name, OCI ref name); `extra` blobs
    (name, data) and extra index entries are added as given."""
    tar = Tar().file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    seen: set[str] = set()
    for image, _, _ in images:
        add_image_blobs(tar, image, seen)
    for name, data in extra:
        tar.file(name, data)
    manifests = [
        index_entry(image.media_type, image.manifest, name, ref) for image, name, ref in images
    ]
    index = {"schemaVersion": 2, "manifests": [*manifests, *entries]}
    return tar.file("index.json", json.dumps(index).encode())


def docker_archive(images: Sequence[tuple[Image, Sequence[str]]], *, share_links: bool) -> Tar:
    """`docker save`'s classic format: `<id>.json` configs, `<n>/layer.tar` layers (the blob as
    the image has it, compressed or not), `manifest.json`; a layer seen before is a symlink to
    the first copy when `share_links` (as Docker writes it)."""
    tar = Tar()
    manifest = []
    written: dict[str, str] = {}
    for image, tags in images:
        config_name = image.id.removeprefix("sha256:") + ".json"
        if config_name not in written.values():
            tar.file(config_name, image.config)
            written[image.id] = config_name
        layers = []
        for layer in image.layers:
            name = f"{layer.digest.removeprefix('sha256:')[:12]}-{len(layers)}-{len(manifest)}"
            path = f"{name}/layer.tar"
            if layer.digest in written and share_links:
                tar.symlink(path, f"../{written[layer.digest]}")
            elif layer.digest not in written:
                tar.file(path, layer.blob)
                written[layer.digest] = path
            else:
                path = written[layer.digest]
            layers.append(path)
        manifest.append({"Config": config_name, "RepoTags": list(tags), "Layers": layers})
    return tar.file("manifest.json", json.dumps(manifest).encode())
