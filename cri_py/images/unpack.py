"""Layer unpacking: one (gzip, zstd or plain) layer tar into its own directory, as overlay
wants it. This is hostile-input code.

Rules, each enforced by construction rather than by checking paths as strings:
- every entry is created relative to a directory fd reached by walking its parents with
  O_NOFOLLOW, so a symlink (or anything not a directory) on the way is an error, never followed;
- names are relative, without `..`: absolute names and any `..` component are rejected;
- nothing is overwritten (O_EXCL, mkdir, mknod, link all fail on an existing name), and a name
  seen twice is rejected, so a later entry cannot replace a checked one;
- a hard link must point at a non-directory entry already unpacked from this same layer;
- OCI whiteouts `.wh.<name>` become overlay whiteouts (a 0:0 char device named `<name>`),
  `.wh..wh..opq` becomes the overlay opaque xattr on its directory; overlay's own xattrs are
  never taken from the tar (a layer could otherwise forge whiteouts or redirects).
The tar is unpacked into a temp dir beside the target and renamed into place only when complete
and when the uncompressed stream hashes to the layer's diff ID; any failure removes the temp dir.
Bounded (`LayerLimits`, from `images.max_layer_bytes` / `images.max_layer_inodes`): a small blob
that inflates without end (a compression bomb, sparse files, trailing data after the tar) or
makes millions of files fails the pull before it fills the node's disk or inode table.

As root, ownership, modes (setuid included), xattrs, device nodes and timestamps are kept.
Without root (unit tests), what needs privilege is skipped and reported in `skipped`: ownership,
char/block devices, xattrs outside `user.*`; the opaque marker goes to `user.overlay.opaque`
(overlay's `userxattr` form). Whiteout devices need no privilege on Linux >= 5.8.

This module does the I/O (decompressing, hashing, creating by descriptor); what an entry says
and whether its name, link target or whiteout is acceptable is decided in `layer_entries`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import secrets
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from cri_py.errors import FailedPrecondition
from cri_py.images.layer_entries import (
    AUFS_META_PREFIX,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    DirMeta,
    forbidden_xattr,
    hardlink_target,
    mtime_ns,
    node_type,
    pax_xattrs,
    split_entry_name,
    whited_out_name,
)
from cri_py.images.store import fsync_dir, measure_tree, rename_noreplace
from cri_py.log import get_logger
from cri_py.store.trash import remove_tree

log = get_logger("cri_py.images.unpack")

OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_OPAQUE_USER_XATTR = "user.overlay.opaque"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COPY_CHUNK = 1 << 20
# Generous: the largest layers seen in the wild (CUDA, model weights) are some tens of GiB
# and some hundred thousand files.
DEFAULT_MAX_LAYER_BYTES = 64 << 30
DEFAULT_MAX_LAYER_INODES = 4_000_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LayerLimits:
    """What one layer may take once unpacked: bytes (of the uncompressed tar and of the files
    written, sparse holes included) and inodes (hard links count: each is a name to make)."""

    max_bytes: int = DEFAULT_MAX_LAYER_BYTES
    max_inodes: int = DEFAULT_MAX_LAYER_INODES


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str
    unpacked_bytes: int  # regular file bytes (hard links once)
    inodes: int
    # What was not reproduced for lack of privilege ("ownership", "device nodes", ...).
    skipped: tuple[str, ...] = ()


class _CorruptStream(Exception):
    """The compressed stream itself is broken (raised from inside tarfile's reads)."""


class _TooLarge(Exception):
    """The layer goes over one of its `LayerLimits`."""


class _HashingReader:
    """Reads the decompressed stream for tarfile, hashing every byte (the diff ID is the hash of
    the whole uncompressed tar, trailing padding included), and no more than `max_bytes`."""

    def __init__(self, stream: IO[bytes], algorithm: str, max_bytes: int) -> None:
        self._stream = stream
        self._hash = hashlib.new(algorithm)
        self._max_bytes = max_bytes
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        # Never more than one byte past the limit in memory, whatever tarfile asks for.
        left = self._max_bytes - self.size + 1
        size = left if size < 0 else min(size, left)
        try:
            data = self._stream.read(size)
        except (EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile) as e:
            raise _CorruptStream(f"{type(e).__name__}: {e}") from None
        self._hash.update(data)
        self.size += len(data)
        if self.size > self._max_bytes:
            raise _TooLarge(f"more than {self._max_bytes} bytes uncompressed")
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass

    def digest(self) -> str:
        return f"{self._hash.name}:{self._hash.hexdigest()}"


def sniff_compression(head: bytes) -> str:
    """`gzip`, `zstd` or `none`, from a blob's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


@contextlib.contextmanager
def _decompressed(blob: Path) -> Iterator[IO[bytes]]:
    """The blob's content, decompressed by sniffing its magic bytes (as Docker and containerd
    do: media types are not always truthful about compression)."""
    with open(blob, "rb") as raw:
        compression = sniff_compression(raw.peek(4)[:4])
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        elif compression == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(
                raw, read_across_frames=True, closefd=False
            )
            with reader:
                yield reader
        else:
            yield raw


class _Extractor:
    def __init__(
        self, root_fd: int, layer: str, privileged: bool, limits: LayerLimits = LayerLimits()
    ) -> None:
        self.root_fd = root_fd
        self.layer = layer
        self.privileged = privileged
        self.limits = limits
        self.seen: dict[tuple[str, ...], str] = {}  # explicit entries -> kind
        self.dirs: dict[tuple[str, ...], DirMeta] = {
            (): DirMeta(0o755, 0, 0, None, {}),
        }
        self.bytes = 0
        self.inodes = 1
        self.links = 0
        self.skipped: set[str] = set()
        self._cached: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def reject(self, entry: str, reason: str) -> FailedPrecondition:
        return FailedPrecondition(f"layer {self.layer}: entry {entry!r} rejected: {reason}")

    # -- directories --

    def walk(self, parts: tuple[str, ...], create: bool, entry: str) -> int:
        """An fd (owned by the caller) of the directory `parts`, reached without following any
        symlink; missing directories are created (0755 root, as containerd does) if `create`."""
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.root_fd)
        try:
            for i, part in enumerate(parts):
                here = parts[: i + 1]
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise self.reject(entry, f"{'/'.join(here)} does not exist") from None
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.inodes += 1
                    self.dirs[here] = DirMeta(0o755, 0, 0, None, {})
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self.reject(
                            entry, f"parent {'/'.join(here)} is a symlink or not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def parent(self, parts: tuple[str, ...], entry: str) -> int:
        """A borrowed fd of `parts` (valid until the next call), for the common case of many
        entries in the same directory."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = self.walk(parts, create=True, entry=entry)
        self.close()
        self._cached = (parts, fd)
        return fd

    # -- metadata --

    def set_xattrs(self, fd: int, xattrs: dict[str, bytes], entry: str) -> None:
        for name, value in xattrs.items():
            if forbidden_xattr(name):
                raise self.reject(entry, f"carries overlay's own xattr {name!r}")
            if not self.privileged and not name.startswith("user."):
                self.skipped.add("privileged xattrs")
                continue
            try:
                os.setxattr(fd, name, value)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.skipped.add(f"xattr {name}")

    def own_fd(self, fd: int, uid: int, gid: int) -> None:
        if self.privileged:
            os.fchown(fd, uid, gid)
        elif (uid, gid) != (os.getuid(), os.getgid()):
            self.skipped.add("ownership")

    def own_path(self, name: str, parent: int, member: tarfile.TarInfo) -> None:
        if self.privileged:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        elif (member.uid, member.gid) != (os.getuid(), os.getgid()):
            self.skipped.add("ownership")

    def stamp_path(self, name: str, parent: int, member: tarfile.TarInfo) -> None:
        ns = mtime_ns(member)
        os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    # -- entries --

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        entry = member.name
        try:
            parts = split_entry_name(entry)
        except ValueError as e:
            raise self.reject(entry, str(e)) from None
        if not parts:
            if not member.isdir():
                raise self.reject(entry, "names the layer root but is not a directory")
            self.dirs[()] = DirMeta.of(member, self.dirs[()].opaque)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self.add_whiteout(member, parts)
            return
        if parts in self.seen:
            raise self.reject(entry, "duplicate entry")
        try:
            parent = self.parent(parts[:-1], entry)
            if member.isdir():
                kind = self.add_dir(member, parts, parent)
            elif member.isreg():
                kind = self.add_file(tar, member, base, parent)
            elif member.issym():
                kind = self.add_symlink(member, base, parent)
            elif member.islnk():
                kind = self.add_hardlink(member, base, parent)
            elif member.ischr() or member.isblk() or member.isfifo():
                kind = self.add_device(member, base, parent)
            else:
                raise self.reject(entry, f"unsupported entry type {member.type!r}")
        except OSError as e:
            # ENAMETOOLONG, EINVAL, ENOSPC...: name the entry rather than answer INTERNAL.
            raise self.reject(entry, f"cannot create it: {e.strerror or e}") from None
        self.seen[parts] = kind

    def add_dir(self, member: tarfile.TarInfo, parts: tuple[str, ...], parent: int) -> str:
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            self.inodes += 1
        except FileExistsError:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if parts not in self.dirs or not stat.S_ISDIR(info.st_mode):
                raise self.reject(member.name, "duplicate entry") from None
        previous = self.dirs.get(parts)
        self.dirs[parts] = DirMeta.of(member, previous.opaque if previous else False)
        return "dir"

    def add_file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, base: str, parent: int
    ) -> str:
        # Checked before writing: a sparse entry's size is what it would take, holes filled.
        if self.bytes + member.size > self.limits.max_bytes:
            raise _TooLarge(f"more than {self.limits.max_bytes} bytes of files")
        try:
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
        except FileExistsError:
            raise self.reject(member.name, "duplicate entry (a directory has that name)") from None
        try:
            source = tar.extractfile(member)
            if source is not None:
                while chunk := source.read(COPY_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            self.bytes += member.size
            self.inodes += 1
            self.own_fd(fd, member.uid, member.gid)
            self.set_xattrs(fd, pax_xattrs(member), member.name)
            os.fchmod(fd, member.mode & 0o7777)
            ns = mtime_ns(member)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        return "file"

    def add_symlink(self, member: tarfile.TarInfo, base: str, parent: int) -> str:
        if not member.linkname or "\x00" in member.linkname:
            raise self.reject(member.name, "symlink with an empty or NUL target")
        try:
            # The target is stored, never followed here: inside the container it resolves
            # against the container's root.
            os.symlink(member.linkname, base, dir_fd=parent)
        except FileExistsError:
            raise self.reject(member.name, "duplicate entry (a directory has that name)") from None
        self.inodes += 1
        self.own_path(base, parent, member)
        self.stamp_path(base, parent, member)
        return "symlink"

    def add_hardlink(self, member: tarfile.TarInfo, base: str, parent: int) -> str:
        try:
            target, kind = hardlink_target(member.linkname, self.seen)
        except ValueError as e:
            raise self.reject(member.name, str(e)) from None
        if kind == "skipped":
            return "skipped"
        source = self.walk(target[:-1], create=False, entry=member.name)
        self.links += 1
        try:
            os.link(target[-1], base, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        except FileExistsError:
            raise self.reject(member.name, "duplicate entry (a directory has that name)") from None
        finally:
            os.close(source)
        return kind

    def add_device(self, member: tarfile.TarInfo, base: str, parent: int) -> str:
        kind_bits = node_type(member)
        if kind_bits != stat.S_IFIFO and not self.privileged:
            self.skipped.add("device nodes")
            return "skipped"
        try:
            os.mknod(
                base, kind_bits | 0o600, os.makedev(member.devmajor, member.devminor),
                dir_fd=parent,
            )  # fmt: skip
        except FileExistsError:
            raise self.reject(member.name, "duplicate entry (a directory has that name)") from None
        self.inodes += 1
        self.own_path(base, parent, member)
        # Just created by us in a directory only we write to: chmod cannot be redirected.
        os.chmod(base, member.mode & 0o7777, dir_fd=parent)
        self.stamp_path(base, parent, member)
        return "device"

    def add_whiteout(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        directory = parts[:-1]
        if base == OPAQUE_MARKER:
            if (*directory, OPAQUE_MARKER) in self.seen:
                raise self.reject(member.name, "duplicate entry")
            self.seen[(*directory, OPAQUE_MARKER)] = "whiteout"
            self.parent(directory, member.name)  # creates it if the tar did not (yet)
            self.dirs[directory].opaque = True
            return
        if base.startswith(AUFS_META_PREFIX):
            return
        try:
            name = whited_out_name(base)
        except ValueError as e:
            raise self.reject(member.name, str(e)) from None
        target = (*directory, name)
        if target in self.seen:
            raise self.reject(member.name, f"duplicate entry: {'/'.join(target)} seen twice")
        parent = self.parent(directory, member.name)
        try:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        except FileExistsError:
            raise self.reject(member.name, "whiteout of a directory this layer created") from None
        except PermissionError:
            self.skipped.add("whiteouts")
            self.seen[target] = "whiteout"
            return
        self.inodes += 1
        self.own_path(name, parent, member)
        self.stamp_path(name, parent, member)
        self.seen[target] = "whiteout"

    def finish_dirs(self) -> None:
        """Directory metadata last, deepest first: children no longer change their mtime, and
        a 0555 directory no longer blocks its own children being written (without root)."""
        for parts in sorted(self.dirs, key=len, reverse=True):
            meta = self.dirs[parts]
            entry = "/".join(parts) or "."
            fd = self.walk(parts, create=False, entry=entry)
            try:
                self.own_fd(fd, meta.uid, meta.gid)
                self.set_xattrs(fd, meta.xattrs, entry)
                if meta.opaque:
                    name = OVERLAY_OPAQUE_XATTR if self.privileged else OVERLAY_OPAQUE_USER_XATTR
                    try:
                        os.setxattr(fd, name, b"y")
                    except OSError as e:
                        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
                        self.skipped.add("opaque markers")
                os.fchmod(fd, meta.mode)
                if meta.mtime_ns is not None:
                    os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(fd)


def _extract(
    reader: _HashingReader,
    root: Path,
    layer: str,
    privileged: bool,
    limits: LayerLimits = LayerLimits(),
) -> _Extractor:
    root_fd = os.open(root, _DIR_FLAGS)
    extractor = _Extractor(root_fd, layer, privileged, limits)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                # Checked before each entry: at most one more inode than the limit (an entry
                # whose parents are missing makes them too: counted, checked at the next).
                if extractor.inodes + extractor.links >= limits.max_inodes:
                    raise _TooLarge(f"more than {limits.max_inodes} files")
                extractor.add(tar, member)
        reader.drain()
        extractor.close()
        extractor.finish_dirs()
    except _TooLarge as e:
        raise FailedPrecondition(
            f"layer {layer}: too large: {e} (images.max_layer_bytes / "
            "images.max_layer_inodes); nothing of it is kept"
        ) from None
    except _CorruptStream as e:
        raise FailedPrecondition(f"layer {layer}: broken compressed stream: {e}") from None
    except tarfile.TarError as e:
        raise FailedPrecondition(f"layer {layer}: not a valid tar: {e}") from None
    finally:
        extractor.close()
        os.close(root_fd)
    return extractor


def unpack_layer(
    blob: Path,
    target: Path,
    diff_id: str,
    *,
    layer: str = "",
    privileged: bool | None = None,
    limits: LayerLimits = LayerLimits(),
) -> UnpackResult:
    """Unpacks the layer blob at `blob` into the directory `target` (which must not exist yet),
    checking that the uncompressed tar hashes to `diff_id` and that it stays within `limits`
    (else FailedPrecondition, and nothing is left). Blocking: run it in a thread.

    When another unpack of the same layer got there first, its directory is kept and measured.
    `layer` names the layer in errors (default: the blob's file name).
    """
    privileged = os.geteuid() == 0 if privileged is None else privileged
    layer = layer or blob.name
    algorithm = diff_id.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise FailedPrecondition(f"layer {layer}: unsupported diff ID {diff_id!r}")
    temp = target.parent / f".tmp-{target.name}-{secrets.token_hex(4)}"
    os.mkdir(temp, 0o700)
    try:
        with _decompressed(blob) as stream:
            reader = _HashingReader(stream, algorithm, limits.max_bytes)
            extractor = _extract(reader, temp, layer, privileged, limits)
        actual = reader.digest()
        if actual != diff_id:
            raise FailedPrecondition(
                f"layer {layer}: uncompressed content hashes to {actual}, the image config "
                f"says {diff_id}"
            )
        if not rename_noreplace(temp, target):
            remove_tree(temp)
            unpacked_bytes, inodes = measure_tree(target)
            return UnpackResult(diff_id, unpacked_bytes, inodes)
        fsync_dir(target.parent)
    except BaseException:
        remove_tree(temp)
        raise
    if extractor.skipped:
        log.debug("unpacked without privilege", layer=layer, skipped=sorted(extractor.skipped))
    return UnpackResult(
        diff_id=diff_id,
        unpacked_bytes=extractor.bytes,
        inodes=extractor.inodes,
        skipped=tuple(sorted(extractor.skipped)),
    )
