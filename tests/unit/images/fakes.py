"""Test doubles for the image code: layer tars and images built in memory, and an in-process
registry (distribution v2 subset) behind `httpx.MockTransport`, with optional bearer-token or
basic auth. No network, no root."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import zstandard

from cri_py.images import manifest as m

MTIME = 1_700_000_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- tar layers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    mtime: int = MTIME
    xattrs: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str, **kw: Any) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target, **kw)


def hardlink(name: str, target: str, **kw: Any) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target, **kw)


def chardev(name: str, major: int, minor: int, **kw: Any) -> Entry:
    return Entry(name, tarfile.CHRTYPE, mode=0o666, devmajor=major, devminor=minor, **kw)


def fifo(name: str, **kw: Any) -> Entry:
    return Entry(name, tarfile.FIFOTYPE, mode=0o644, **kw)


def make_tar(entries: Sequence[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return out.getvalue()


@dataclass(frozen=True)
class Layer:
    blob: bytes
    diff_id: str
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.blob)


MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def make_layer(entries: Sequence[Entry], compression: str = "gzip") -> Layer:
    tar = make_tar(entries)
    if compression == "gzip":
        blob = gzip.compress(tar, mtime=0)
    elif compression == "zstd":
        blob = zstandard.ZstdCompressor().compress(tar)
    else:
        blob = tar
    return Layer(blob, sha256(tar), MEDIA[compression])


# --- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    manifest: bytes
    config: bytes
    layers: tuple[Layer, ...]
    media_type: str = m.OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def id(self) -> str:
        return sha256(self.config)

    @property
    def blobs(self) -> dict[str, bytes]:
        return {self.id: self.config, **{layer.digest: layer.blob for layer in self.layers}}


def make_image(
    layers: Sequence[Layer],
    *,
    user: str = "",
    architecture: str = "amd64",
    variant: str = "",
    docker: bool = False,
    cmd: Sequence[str] = ("sh",),
    label: str = "",
) -> Image:
    config_doc: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "config": {
            "User": user,
            "Env": ["PATH=/bin"],
            "Cmd": list(cmd),
            "WorkingDir": "/",
            "ExposedPorts": {"80/tcp": {}},
            "StopSignal": "SIGTERM",
            "Labels": {"label": label} if label else None,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    if variant:
        config_doc["variant"] = variant
    config = json.dumps(config_doc).encode()
    media_type = m.DOCKER_MANIFEST if docker else m.OCI_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": m.DOCKER_CONFIG if docker else m.OCI_CONFIG,
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.blob)}
                for layer in layers
            ],
        }
    ).encode()
    return Image(manifest, config, tuple(layers), media_type)


def make_index(images: Sequence[tuple[m.Platform, Image]], docker: bool = False) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": m.DOCKER_MANIFEST_LIST if docker else m.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": {
                        "os": platform.os,
                        "architecture": platform.architecture,
                        **({"variant": platform.variant} if platform.variant else {}),
                    },
                }
                for platform, image in images
            ],
        }
    ).encode()


def simple_image(label: str = "", compression: str = "gzip", user: str = "") -> Image:
    base = make_layer(
        [directory("bin"), file("bin/sh", b"#!shell\n", 0o755), file("etc/os-release", b"x")],
        compression,
    )
    top = make_layer([file("hello.txt", f"hello {label}".encode())], compression)
    return make_image([base, top], label=label, user=user)


# --- the registry -------------------------------------------------------------------------------


class Registry:
    """One registry host: repositories of manifests and blobs, optional auth, request log."""

    def __init__(self, host: str, auth: str = "", users: dict[str, str] | None = None) -> None:
        self.host = host
        self.auth = auth  # "", "bearer" or "basic"
        self.users = users or {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.blob_gets: Counter[str] = Counter()
        self.requests: list[httpx.Request] = []
        self.tokens: set[str] = set()
        self.token_requests: list[httpx.Request] = []
        # Hooks: replace a blob's bytes as served, or delay each chunk.
        self.tamper: dict[str, bytes] = {}
        self.chunk_delay = 0.0
        self.stall_after: int | None = None
        self.on_blob: Callable[[str], Any] | None = None
        # The scheme of the token realm the bearer challenge names.
        self.realm_scheme = "https"

    def push(self, repository: str, tag: str, image: Image) -> None:
        self.manifests[(repository, tag)] = (image.manifest, image.media_type)
        self.manifests[(repository, image.digest)] = (image.manifest, image.media_type)
        for digest, data in image.blobs.items():
            self.blobs[(repository, digest)] = data

    def push_index(self, repository: str, tag: str, index: bytes, images: Sequence[Image]) -> str:
        media_type = json.loads(index)["mediaType"]
        self.manifests[(repository, tag)] = (index, media_type)
        self.manifests[(repository, sha256(index))] = (index, media_type)
        for image in images:
            self.manifests[(repository, image.digest)] = (image.manifest, image.media_type)
            for digest, data in image.blobs.items():
                self.blobs[(repository, digest)] = data
        return sha256(index)

    def _authorized(self, request: httpx.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "bearer":
            return header.startswith("Bearer ") and header[7:] in self.tokens
        if self.auth == "basic":
            return header in {_basic(u, p) for u, p in self.users.items()}
        return True

    def _challenge(self, repository: str) -> httpx.Response:
        if self.auth == "bearer":
            value = (
                f'Bearer realm="{self.realm_scheme}://auth.{self.host}/token",service="{self.host}",'
                f'scope="repository:{repository}:pull"'
            )
        else:
            value = 'Basic realm="fake"'
        return httpx.Response(401, headers={"WWW-Authenticate": value})

    async def token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        header = request.headers.get("Authorization", "")
        if self.users and header not in {_basic(u, p) for u, p in self.users.items()}:
            if request.method == "POST":
                form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
                if form.get("refresh_token") != "refresh-me":
                    return httpx.Response(401)
            else:
                return httpx.Response(401)
        token = f"token-{len(self.tokens)}"
        self.tokens.add(token)
        return httpx.Response(200, json={"token": token, "expires_in": 300})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        parts = path.removeprefix("/v2/").split("/")
        if len(parts) < 3 or parts[-2] not in ("manifests", "blobs"):
            return httpx.Response(404)
        repository, kind, reference = "/".join(parts[:-2]), parts[-2], parts[-1]
        if not self._authorized(request):
            return self._challenge(repository)
        if kind == "manifests":
            found = self.manifests.get((repository, reference))
            if found is None:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            data, media_type = found
            return httpx.Response(
                200,
                content=data,
                headers={"Content-Type": media_type, "Docker-Content-Digest": sha256(data)},
            )
        blob = self.blobs.get((repository, reference))
        if blob is None:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
        self.blob_gets[reference] += 1
        if self.on_blob is not None:
            await self.on_blob(reference)
        blob = self.tamper.get(reference, blob)
        return httpx.Response(200, stream=_Chunks(blob, self.chunk_delay, self.stall_after))


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, data: bytes, delay: float, stall_after: int | None) -> None:
        self.data, self.delay, self.stall_after = data, delay, stall_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 1024):
            if self.stall_after is not None and start >= self.stall_after:
                await asyncio.sleep(3600)
            if self.delay:
                await asyncio.sleep(self.delay)
            yield self.data[start : start + 1024]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Network:
    """Routes requests by host to fake registries (and their token endpoints `auth.<host>`);
    an unknown host refuses the connection."""

    def __init__(self, *registries: Registry) -> None:
        self.registries = {r.host: r for r in registries}
        self.refused: list[str] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        if host in self.registries:
            return await self.registries[host].handle(request)
        if host.startswith("auth.") and host[5:] in self.registries:
            return await self.registries[host[5:]].token(request)
        self.refused.append(host)
        raise httpx.ConnectError(f"connection refused: {host}", request=request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)
