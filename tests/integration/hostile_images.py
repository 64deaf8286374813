"""Hostile images for the isolation tests: the lab's busybox plus one layer built in memory
(symlinked /dev, /proc, /sys, /etc/passwd -> /dev/zero, FIFOs, mount destinations through
symlinks...), pushed to the lab registry on loopback under `127.0.0.1:5000/cri-py-tests/`.

The busybox layers are mounted across repositories (or copied when the registry will not),
so a push costs one small layer, a config and a manifest. Pushed images stay in the registry;
re-pushing the same case is idempotent (same digests). Loopback only, never a proxy.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import socket
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

REGISTRY = "127.0.0.1:5000"
BASE_REPOSITORY = "registry.k8s.io/e2e-test-images/busybox"
BASE_TAG = "1.29-2"
TEST_PREFIX = "cri-py-tests"

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_ACCEPT = ", ".join(
    [
        MEDIA_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


@dataclass(frozen=True)
class Entry:
    """One tar entry of the hostile layer: kind is dir, file, symlink or fifo."""

    name: str
    kind: str
    data: bytes = b""
    target: str = ""
    mode: int = 0o755


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, "dir", mode=mode)


def file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, "file", data=data, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def fifo(name: str) -> Entry:
    return Entry(name, "fifo", mode=0o644)


def escape_upwards(host_path: str, depth: int = 24) -> str:
    """A relative link target that climbs out of any rootfs (more `..` than it is deep) and
    lands on `host_path` when followed from the host; inside the container it is
    `host_path` too (`..` stops at `/`)."""
    return "../" * depth + host_path.lstrip("/")


def registry_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5000), 1):
        return True
    return False


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An uncompressed tar of the entries, owned by root, mtime 0 (reproducible)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            info.mtime = 0
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            elif entry.kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                raise ValueError(f"unknown entry kind {entry.kind!r}")
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Registry:
    def __init__(self) -> None:
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        self.http = httpx.Client(base_url=f"http://{REGISTRY}", timeout=60, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def manifest(self, repository: str, reference: str) -> dict[str, Any]:
        response = self.http.get(
            f"/v2/{repository}/manifests/{reference}", headers={"Accept": _ACCEPT}
        )
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        if "manifests" in document:  # an index: the amd64/linux manifest
            (chosen,) = [
                m
                for m in document["manifests"]
                if m.get("platform", {}).get("architecture") == "amd64"
            ]
            return self.manifest(repository, chosen["digest"])
        return document

    def blob(self, repository: str, digest: str) -> bytes:
        response = self.http.get(f"/v2/{repository}/blobs/{digest}")
        response.raise_for_status()
        return response.content

    def has_blob(self, repository: str, digest: str) -> bool:
        return self.http.head(f"/v2/{repository}/blobs/{digest}").status_code == 200

    def upload(self, repository: str, data: bytes) -> str:
        digest = _digest(data)
        if self.has_blob(repository, digest):
            return digest
        started = self.http.post(f"/v2/{repository}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        done = self.http.put(
            f"{location}{separator}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        done.raise_for_status()
        return digest

    def mount_or_copy(self, repository: str, source: str, digest: str) -> None:
        if self.has_blob(repository, digest):
            return
        mounted = self.http.post(
            f"/v2/{repository}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        if mounted.status_code == 201:
            return
        if mounted.status_code == 202:  # upload started instead: cancel it, copy the blob
            with contextlib.suppress(httpx.HTTPError):
                self.http.delete(mounted.headers["Location"])
        self.upload(repository, self.blob(source, digest))

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> None:
        response = self.http.put(
            f"/v2/{repository}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": MEDIA_MANIFEST},
        )
        response.raise_for_status()


def push_image(
    case: str,
    entries: Sequence[Entry],
    config: Mapping[str, Any] | None = None,
) -> str:
    """Pushes busybox + a layer of `entries` as `127.0.0.1:5000/cri-py-tests/<case>:1`, with
    `config` merged into the image config's `config` (WorkingDir, User, Cmd...); returns the
    reference to pull."""
    repository = f"{TEST_PREFIX}/{case}"
    registry = _Registry()
    try:
        base = registry.manifest(BASE_REPOSITORY, BASE_TAG)
        base_config = json.loads(registry.blob(BASE_REPOSITORY, base["config"]["digest"]))
        for layer in base["layers"]:
            registry.mount_or_copy(repository, BASE_REPOSITORY, layer["digest"])
        tar = layer_tar(entries)
        compressed = gzip.compress(tar, mtime=0)
        layer_digest = registry.upload(repository, compressed)
        image_config = dict(base_config)
        image_config["config"] = {**base_config.get("config", {}), **(config or {})}
        image_config["rootfs"] = {
            "type": "layers",
            "diff_ids": [*base_config["rootfs"]["diff_ids"], _digest(tar)],
        }
        image_config["history"] = [
            *base_config.get("history", []),
            {"created_by": f"cri-py tests/integration/hostile_images.py: {case}"},
        ]
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        config_digest = registry.upload(repository, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                *base["layers"],
                {"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(compressed)},
            ],
        }
        registry.put_manifest(repository, "1", json.dumps(manifest, sort_keys=True).encode())
    finally:
        registry.close()
    return f"{REGISTRY}/{repository}:1"
