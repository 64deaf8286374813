"""Image archives as `cri-py images import` reads them: OCI image layouts and `docker save`
tarballs (both the classic format and Docker 25's OCI layout with a `manifest.json` beside it),
possibly gzip or zstd compressed as a whole. This is hostile-input code.

`stage_archive` makes one sequential pass over the tar (a pipe is fine): every regular file is
hashed as it is copied into the store's `ingest/` dir under a name of our own, the layout's
small JSON documents are kept in memory, and symlinks and hard links are remembered as names of
other members. Nothing is ever created or opened by a member's name, so no name, link or
`manifest.json` path can reach outside the archive: a name that does not resolve to a member
of this archive is an error. `top_level` reads the archive's index (OCI `index.json`, else
Docker's `manifest.json`, turned into one Docker manifest per image as containerd does) into
the entries an import names. Choosing a platform, checking blobs against their descriptors,
unpacking and naming are the importer's (`importer.py`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import secrets
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    parse_manifest,
)
from cri_py.images.reference import parse_reference, validate_digest
from cri_py.images.unpack import sniff_compression

OCI_LAYOUT_FILE = "oci-layout"
OCI_INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
OCI_LAYOUT_VERSION = "1.0.0"
# containerd's names for an image in an index entry: its own annotation (a full reference) and
# OCI's (often only a tag).
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
OCI_REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"

COPY_CHUNK = 1 << 20
# Links are followed at most this deep (a loop of links is an error, not a hang).
MAX_LINK_DEPTH = 16
# The documents kept in memory; the rest of the archive goes to disk.
_DOCUMENTS = (OCI_LAYOUT_FILE, OCI_INDEX_FILE, DOCKER_MANIFEST_FILE)


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may hold: bytes per member (a layer blob is at most what an unpacked
    layer may be, `images.max_layer_bytes`) and members in all."""

    max_member_bytes: int
    max_members: int = 100_000


@dataclass(frozen=True)
class StagedFile:
    """A regular file of the archive, copied into `ingest/`, with its sha256 and size."""

    path: Path
    digest: str
    size: int


@dataclass(frozen=True)
class ArchiveEntry:
    """One image the archive names (or carries nameless): what its index entry points at, and
    the names it carries, as containerd reads them (`name` from containerd's annotation or
    Docker's RepoTags, `ref_name` from OCI's annotation, which may be only a tag)."""

    descriptor: Descriptor
    name: str = ""
    ref_name: str = ""


@dataclass
class StagedArchive:
    """What `stage_archive` read. `close()` removes the staged files not moved into the store."""

    files: dict[str, StagedFile] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # member -> the member it points at
    documents: dict[str, bytes] = field(default_factory=dict)
    by_digest: dict[str, StagedFile] = field(default_factory=dict)
    # Documents the import made (Docker manifests), by digest.
    made: dict[str, bytes] = field(default_factory=dict)

    def close(self) -> None:
        for staged in self.files.values():
            staged.path.unlink(missing_ok=True)

    def resolve(self, name: str) -> StagedFile:
        """The regular file `name` is, or leads to through links; FailedPrecondition when it
        is not a member of this archive (a link out of it included)."""
        start = name
        for _ in range(MAX_LINK_DEPTH):
            staged = self.files.get(name)
            if staged is not None:
                return staged
            target = self.links.get(name)
            if target is None:
                if name != start:
                    raise FailedPrecondition(
                        f"archive: {start!r} links to {name!r}, which is not in the archive"
                    )
                raise FailedPrecondition(f"archive: {start!r} is not in the archive")
            name = target
        raise FailedPrecondition(f"archive: {start!r}: too many levels of links")

    def blob(self, descriptor: Descriptor, what: str) -> StagedFile:
        """The archive's file with the content `descriptor` names, checked against its digest
        and size (looked up by content, as containerd's store does, then by its layout path
        `blobs/<algorithm>/<hex>` to say what is wrong with it)."""
        digest = descriptor.digest
        staged = self.by_digest.get(digest)
        if staged is None:
            path = "blobs/" + digest.replace(":", "/", 1)
            if path not in self.files and path not in self.links:
                raise FailedPrecondition(f"archive: {what} {digest} is not in the archive")
            staged = self.resolve(path)
            actual = _rehash(staged.path, digest.partition(":")[0])
            if actual != digest:
                raise FailedPrecondition(
                    f"archive: {what} {path}: content does not match its digest "
                    f"(it hashes to {actual})"
                )
            self.by_digest[digest] = staged
        if staged.size != descriptor.size:
            raise FailedPrecondition(
                f"archive: {what} {digest}: the descriptor declares {descriptor.size} bytes, "
                f"the archive has {staged.size}"
            )
        return staged

    def document(self, descriptor: Descriptor, what: str) -> bytes:
        """A manifest or index the descriptor names: made by the import or read (bounded) from
        the archive, checked as `blob` checks."""
        made = self.made.get(descriptor.digest)
        if made is not None:
            return made
        if descriptor.size > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(
                f"archive: {what} {descriptor.digest} declares {descriptor.size} bytes, more "
                f"than the {MAX_MANIFEST_BYTES} a manifest may have"
            )
        return self.blob(descriptor, what).path.read_bytes()


def _rehash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


def member_name(name: str) -> str:
    """A member's name as a key: `./a//b/` is `a/b`; absolute names and names that climb out
    with `..` are refused (nothing is created from them, but no honest archive has them)."""
    cleaned = posixpath.normpath(name)
    if name.startswith("/") or cleaned == ".." or cleaned.startswith("../"):
        raise FailedPrecondition(f"archive: member {name!r} points outside the archive")
    return cleaned


def _link_target(member: tarfile.TarInfo, name: str) -> str | None:
    """The member a link names, or None when it leads outside the archive (absolute, or up
    past its root): such a link is kept as a dead end and fails only if something uses it."""
    if member.issym():
        if member.linkname.startswith("/"):
            return None
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
    else:  # a hard link names another member from the archive's root
        target = posixpath.normpath(member.linkname)
    if target == ".." or target.startswith("../") or target.startswith("/"):
        return None
    return target


class _Prefixed:
    """A stream with its first bytes (read to sniff them) put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data = self._head if size < 0 or size >= len(self._head) else self._head[:size]
            self._head = self._head[len(data) :]
            return data
        return self._rest.read(size)


class _Reader:
    """The outer stream, decompressed if it is gzip or zstd (sniffed, as `ctr import` does)."""

    def __init__(self, stream: IO[bytes]) -> None:
        head = b""
        while len(head) < 4 and (more := stream.read(4 - len(head))):
            head += more
        source = _Prefixed(head, stream)
        compression = sniff_compression(head)
        self._inner: Any
        if compression == "gzip":
            self._inner = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[call-overload]
        elif compression == "zstd":
            self._inner = zstandard.ZstdDecompressor().stream_reader(
                source,  # type: ignore[arg-type]
                read_across_frames=True,
                closefd=False,
            )
        else:
            self._inner = source

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._inner.read(size)
        except (EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile) as e:
            raise FailedPrecondition(f"archive: the compressed stream is corrupt: {e}") from None
        return data


def stage_archive(stream: IO[bytes], ingest_dir: Path, limits: ArchiveLimits) -> StagedArchive:
    """Reads the archive `stream` in one pass (blocking: call it from a worker thread); its
    regular files end up in `ingest_dir`. On failure nothing staged is left behind."""
    staged = StagedArchive()
    seen: set[str] = set()
    try:
        try:
            # Closed by the `with` below; opening reads the first header, which can fail.
            tar = tarfile.open(fileobj=_Reader(stream), mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
        except (tarfile.TarError, EOFError) as e:
            raise FailedPrecondition(f"archive: not a valid tar: {e}") from None
        with tar:
            for member in _members(tar):
                if len(seen) >= limits.max_members:
                    raise FailedPrecondition(f"archive: more than {limits.max_members} members")
                name = member_name(member.name)
                if member.isdir():
                    continue
                if name in seen:
                    raise FailedPrecondition(f"archive: member {name!r} appears twice")
                seen.add(name)
                if member.issym() or member.islnk():
                    target = _link_target(member, name)
                    staged.links[name] = target if target is not None else member.linkname
                elif member.isreg():
                    _stage_member(tar, member, name, staged, ingest_dir, limits)
                # Devices, fifos and the like are no part of an image archive: ignored, as
                # containerd ignores them.
    except BaseException:
        staged.close()
        raise
    return staged


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members, with tarfile's own errors (a truncated or garbled tar) made ours."""
    while True:
        try:
            member = tar.next()
        except (tarfile.TarError, EOFError) as e:
            raise FailedPrecondition(f"archive: not a valid tar: {e}") from None
        if member is None:
            return
        yield member


def _stage_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    name: str,
    staged: StagedArchive,
    ingest_dir: Path,
    limits: ArchiveLimits,
) -> None:
    document = name in _DOCUMENTS
    limit = MAX_MANIFEST_BYTES if document else limits.max_member_bytes
    if member.size > limit:
        raise FailedPrecondition(
            f"archive: member {name!r} declares {member.size} bytes, more than the {limit} allowed"
        )
    source = tar.extractfile(member)
    if source is None:
        raise FailedPrecondition(f"archive: member {name!r} cannot be read")
    try:
        if document:
            staged.documents[name] = source.read()
            return
        digest = hashlib.sha256()
        size = 0
        path = ingest_dir / f"import-{secrets.token_hex(8)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        staged.files[name] = StagedFile(path, "", 0)  # removed by close() whatever happens
        try:
            while chunk := source.read(COPY_CHUNK):
                size += len(chunk)
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except (tarfile.TarError, EOFError) as e:
        raise FailedPrecondition(f"archive: member {name!r} is truncated: {e}") from None
    if size != member.size:
        raise FailedPrecondition(f"archive: member {name!r} is truncated")
    file = StagedFile(path, f"sha256:{digest.hexdigest()}", size)
    staged.files[name] = file
    staged.by_digest.setdefault(file.digest, file)


# --- the archive's index ------------------------------------------------------------------------


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FailedPrecondition(f"archive: {what} is not valid JSON: {e}") from None


def top_level(staged: StagedArchive) -> tuple[ArchiveEntry, ...]:
    """The images the archive holds: the entries of its OCI `index.json` when it has an
    `oci-layout` (preferred, as containerd prefers it), else those of Docker's
    `manifest.json`; FailedPrecondition when it is neither."""
    if OCI_LAYOUT_FILE in staged.documents:
        return _oci_entries(staged)
    if DOCKER_MANIFEST_FILE in staged.documents:
        return _docker_entries(staged)
    raise FailedPrecondition(
        "archive: not an image archive (no oci-layout and no manifest.json at its top)"
    )


def _oci_entries(staged: StagedArchive) -> tuple[ArchiveEntry, ...]:
    layout = _json(staged.documents[OCI_LAYOUT_FILE], OCI_LAYOUT_FILE)
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version != OCI_LAYOUT_VERSION:
        raise FailedPrecondition(f"archive: unsupported OCI layout version {version!r}")
    data = staged.documents.get(OCI_INDEX_FILE)
    if data is None:
        raise FailedPrecondition("archive: OCI layout without index.json")
    try:
        index = parse_manifest(data, "application/vnd.oci.image.index.v1+json")
    except FailedPrecondition as e:
        raise FailedPrecondition(f"archive: index.json: {e}") from None
    if not isinstance(index, Index):
        raise FailedPrecondition("archive: index.json is not an index")
    raw = _json(data, OCI_INDEX_FILE)["manifests"]
    entries = []
    for i, (descriptor, doc) in enumerate(zip(index.manifests, raw, strict=True)):
        if descriptor.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            raise FailedPrecondition(
                f"archive: index.json manifests[{i}]: media type {descriptor.media_type!r} "
                "is not an image manifest or index"
            )
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(v, str) for v in annotations.values()
        ):
            raise FailedPrecondition(
                f"archive: index.json manifests[{i}].annotations: expected strings"
            )
        entries.append(
            ArchiveEntry(
                descriptor,
                name=annotations.get(CONTAINERD_NAME_ANNOTATION, ""),
                ref_name=annotations.get(OCI_REF_NAME_ANNOTATION, ""),
            )
        )
    return tuple(entries)


def _docker_entries(staged: StagedArchive) -> tuple[ArchiveEntry, ...]:
    images = _json(staged.documents[DOCKER_MANIFEST_FILE], DOCKER_MANIFEST_FILE)
    if not isinstance(images, list):
        raise FailedPrecondition("archive: manifest.json is not a list")
    entries = []
    for i, image in enumerate(images):
        what = f"manifest.json[{i}]"
        if not isinstance(image, dict):
            raise FailedPrecondition(f"archive: {what} is not an object")
        config_path, layer_paths, tags = (
            image.get("Config"),
            image.get("Layers") or [],
            image.get("RepoTags") or [],
        )
        if not isinstance(config_path, str):
            raise FailedPrecondition(f"archive: {what}.Config is not a path")
        if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
            raise FailedPrecondition(f"archive: {what}.Layers is not a list of paths")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise FailedPrecondition(f"archive: {what}.RepoTags is not a list of names")
        descriptor = _docker_manifest(staged, what, config_path, layer_paths)
        if not tags:
            entries.append(ArchiveEntry(descriptor))
        for tag in tags:
            try:
                name = str(parse_reference(tag))
            except InvalidArgument as e:
                raise FailedPrecondition(f"archive: {what}.RepoTags: {e}") from None
            entries.append(ArchiveEntry(descriptor, name=name))
    return tuple(entries)


def _path_in_archive(staged: StagedArchive, path: str, what: str) -> StagedFile:
    try:
        name = member_name(path)
    except FailedPrecondition:
        raise FailedPrecondition(f"archive: {what} {path!r} points outside the archive") from None
    return staged.resolve(name)


def _docker_manifest(
    staged: StagedArchive, what: str, config_path: str, layer_paths: list[str]
) -> Descriptor:
    """A Docker schema 2 manifest for one image of `manifest.json` (layers typed by their
    compression, as containerd types them), kept in `staged.made`; its descriptor."""
    config = _path_in_archive(staged, config_path, f"{what}.Config")
    layers = []
    for path in layer_paths:
        layer = _path_in_archive(staged, path, f"{what}.Layers")
        with open(layer.path, "rb") as f:
            compression = sniff_compression(f.read(4))
        media_type = {"gzip": DOCKER_LAYER_GZIP, "zstd": DOCKER_LAYER_ZSTD}.get(
            compression, DOCKER_LAYER
        )
        layers.append({"mediaType": media_type, "digest": layer.digest, "size": layer.size})
    # Key order and spacing as Go's encoding/json writes it, so the made manifest has the
    # digest containerd's import gives the same archive.
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config.digest, "size": config.size},
        "layers": layers,
    }
    data = json.dumps(document, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    staged.made[digest] = data
    return Descriptor(DOCKER_MANIFEST, validate_digest(digest), len(data))
