"""Manifests, indexes and image configs: parse them, pick a platform, derive chain IDs.

Pure: bytes and values in, frozen values out; no clock, filesystem or environment (the host
platform is passed in). Docker schema2 and OCI documents are both accepted; schema1 is not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.images.reference import validate_digest
from cri_py.model.image import RuntimeConfig

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
# What a pull accepts, best first (the Accept header of a manifest request).
ACCEPTED_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

# Manifests and configs are read whole into memory: refuse absurd ones (hostile registries).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """An image manifest (one platform): the config blob and the layers, lowest first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    """A manifest list or OCI index: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config cri-py uses."""

    platform: Platform
    diff_ids: tuple[str, ...]
    runtime: RuntimeConfig


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _load_json(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise FailedPrecondition(f"{what} is {len(data)} bytes, more than the {limit} allowed")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FailedPrecondition(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise FailedPrecondition(f"{what} is not a JSON object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise FailedPrecondition(f"{what}: expected a string, got {value!r}")
    return value


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FailedPrecondition(f"{what}: expected a list of strings")
    return tuple(value)


def _keys(value: Any, what: str) -> tuple[str, ...]:
    """Keys of a Go `map[string]struct{}` field (ExposedPorts, Volumes), sorted."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise FailedPrecondition(f"{what}: expected an object")
    return tuple(sorted(str(k) for k in value))


def _platform(value: Any, what: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FailedPrecondition(f"{what}.platform: expected an object")
    return Platform(
        os=_str(value.get("os", ""), f"{what}.platform.os"),
        architecture=_str(value.get("architecture", ""), f"{what}.platform.architecture"),
        variant=_str(value.get("variant", ""), f"{what}.platform.variant"),
    )


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise FailedPrecondition(f"{what}: expected a descriptor object")
    digest = _str(value.get("digest"), f"{what}.digest")
    try:
        validate_digest(digest)
    except InvalidArgument as e:
        raise FailedPrecondition(f"{what}: {e}") from None
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FailedPrecondition(f"{what}.size: expected a non-negative integer, got {size!r}")
    return Descriptor(
        media_type=_str(value.get("mediaType", ""), f"{what}.mediaType"),
        digest=digest,
        size=size,
        platform=_platform(value.get("platform"), what),
        urls=_str_list(value.get("urls"), f"{what}.urls"),
    )


def parse_manifest(data: bytes, content_type: str = "") -> Manifest | Index:
    """Parses a manifest or index; the document's `mediaType` wins over the HTTP content type
    (OCI makes the field optional, so the header is the fallback, then the document's shape)."""
    doc = _load_json(data, "manifest", MAX_MANIFEST_BYTES)
    media_type = doc.get("mediaType") or content_type.split(";")[0].strip()
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise FailedPrecondition(
            "manifest is Docker schema 1, which cri-py does not support (push it again as "
            "schema 2 or OCI)"
        )
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise FailedPrecondition("index has no manifests list")
        return Index(
            media_type=media_type,
            manifests=tuple(_descriptor(m, f"manifests[{i}]") for i, m in enumerate(entries)),
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise FailedPrecondition("manifest has no layers list")
    parsed = tuple(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers))
    for i, layer in enumerate(parsed):
        if layer.media_type not in LAYER_TYPES:
            raise FailedPrecondition(
                f"layers[{i}]: media type {layer.media_type!r} is not an image layer"
            )
    return Manifest(
        media_type=media_type, config=_descriptor(doc.get("config"), "config"), layers=parsed
    )


def _variant_rank(host: Platform, candidate: Platform) -> int | None:
    """How well `candidate`'s variant fits the host (lower is better); None: cannot run."""
    if candidate.variant == host.variant:
        return 0
    if host.architecture == "arm64" and {candidate.variant, host.variant} <= {"", "v8"}:
        return 0
    if host.architecture == "arm" and host.variant.startswith("v"):
        # An ARMv7 host runs v6 and v5 binaries: prefer the newest that fits.
        if not candidate.variant:
            return 10
        try:
            theirs, ours = int(candidate.variant[1:]), int(host.variant[1:])
        except ValueError:
            return None
        return ours - theirs if theirs <= ours else None
    if not candidate.variant:
        return 5
    return None


def select_platform(index: Index, host: Platform) -> Descriptor:
    """The manifest of `index` for `host`: same os and architecture, best variant; the first
    listed among equals (the order a registry keeps is the order the image's author chose)."""
    best: tuple[int, int, Descriptor] | None = None
    for position, entry in enumerate(index.manifests):
        if entry.media_type and entry.media_type not in MANIFEST_TYPES:
            continue  # attestations, nested indexes and unknown kinds are not runnable
        platform = entry.platform
        if platform is None or platform.os != host.os:
            continue
        if platform.architecture != host.architecture:
            continue
        rank = _variant_rank(host, platform)
        if rank is None:
            continue
        if best is None or (rank, position) < best[:2]:
            best = (rank, position, entry)
    if best is None:
        offered = ", ".join(str(m.platform) for m in index.manifests if m.platform) or "none"
        raise FailedPrecondition(
            f"no manifest for platform {host} in the index (offered: {offered})"
        )
    return best[2]


def parse_image_config(data: bytes) -> ImageConfig:
    doc = _load_json(data, "image config", MAX_CONFIG_BYTES)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise FailedPrecondition("image config: rootfs must be an object of type 'layers'")
    diff_ids = _str_list(rootfs.get("diff_ids"), "image config: rootfs.diff_ids")
    for diff_id in diff_ids:
        try:
            validate_digest(diff_id)
        except InvalidArgument as e:
            raise FailedPrecondition(f"image config: rootfs.diff_ids: {e}") from None
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise FailedPrecondition("image config: config must be an object")
    labels = config.get("Labels") or {}
    if not isinstance(labels, dict):
        raise FailedPrecondition("image config: config.Labels must be an object")
    runtime = RuntimeConfig(
        user=_str(config.get("User") or "", "config.User"),
        env=_str_list(config.get("Env"), "config.Env"),
        entrypoint=_str_list(config.get("Entrypoint"), "config.Entrypoint"),
        cmd=_str_list(config.get("Cmd"), "config.Cmd"),
        working_dir=_str(config.get("WorkingDir") or "", "config.WorkingDir"),
        stop_signal=_str(config.get("StopSignal") or "", "config.StopSignal"),
        exposed_ports=_keys(config.get("ExposedPorts"), "config.ExposedPorts"),
        volumes=_keys(config.get("Volumes"), "config.Volumes"),
        labels={str(k): str(v) for k, v in labels.items()},
    )
    platform = Platform(
        os=_str(doc.get("os", ""), "os"),
        architecture=_str(doc.get("architecture", ""), "architecture"),
        variant=_str(doc.get("variant", ""), "variant"),
    )
    return ImageConfig(platform=platform, diff_ids=diff_ids, runtime=runtime)


def check_layers_match(manifest: Manifest, config: ImageConfig) -> None:
    """A manifest and its config must agree on the number of layers (diff_ids are per layer)."""
    if len(manifest.layers) != len(config.diff_ids):
        raise FailedPrecondition(
            f"manifest lists {len(manifest.layers)} layers but the image config has "
            f"{len(config.diff_ids)} diff_ids"
        )


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """The OCI chain IDs: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " +
    DiffID(Ln)). A chain ID names a layer together with everything below it."""
    result: list[str] = []
    for diff_id in diff_ids:
        if not result:
            result.append(diff_id)
        else:
            result.append(sha256_digest(f"{result[-1]} {diff_id}".encode()))
    return tuple(result)


def user_of(user: str) -> tuple[int | None, str]:
    """The CRI's (uid, username) from an image's USER: `1002` or `1002:g` -> (1002, ""),
    `www-data` or `www-data:g` -> (None, "www-data"), empty -> (None, "") (containerd's rule)."""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isascii() and name.isdigit():
        return int(name), ""
    return None, name
