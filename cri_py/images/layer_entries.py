"""What a layer tar's entries say, judged without touching the disk: entry names as checked
path components, hard-link targets, whiteout names, node types, directory metadata, timestamps
and PAX xattrs.

Pure: values in, values out, `ValueError` with the reason when an entry is refused. Creating
anything, by descriptor, is `unpack`'s (whose docstring lists the rules both keep).
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
AUFS_META_PREFIX = ".wh..wh."  # aufs bookkeeping (.wh..wh.plnk, ...): not content
# Overlay interprets these itself; an image must not be able to set them.
FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
PAX_XATTR_PREFIX = "SCHILY.xattr."
MAX_MTIME_NS = (1 << 62) - 1


def split_entry_name(name: str) -> tuple[str, ...]:
    """An entry name as path components; raises ValueError (with the reason) when it is absolute
    or has a `..` component. `.` and empty components are dropped (`./a//b` is `a/b`)."""
    if "\x00" in name:
        raise ValueError("name contains a NUL byte")
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("path escapes the layer directory through '..'")
    return parts


def hardlink_target(
    linkname: str, seen: Mapping[tuple[str, ...], str]
) -> tuple[tuple[str, ...], str]:
    """The entry a hard link points at and that entry's kind (from `seen`: the entries of this
    layer so far, by kind). ValueError unless it names a non-directory entry already unpacked
    from this same layer; a `skipped` kind is returned for the caller to skip the link too."""
    try:
        target = split_entry_name(linkname)
    except ValueError as e:
        raise ValueError(f"hard link target {linkname!r}: {e}") from None
    kind = seen.get(target)
    if kind is None or not target:
        raise ValueError(f"hard link target {linkname!r} is not an earlier entry of this layer")
    if kind in ("dir", "whiteout"):
        raise ValueError(f"hard link to a {kind} {linkname!r}")
    return target, kind


def whited_out_name(base: str) -> str:
    """The name a `.wh.<name>` entry whites out in its directory; ValueError when that name
    would reach outside the directory (`.wh.`, `.wh..`, `.wh...`)."""
    name = base[len(WHITEOUT_PREFIX) :]
    if name in ("", ".", ".."):
        raise ValueError(f"whiteout of {name!r} escapes its directory")
    return name


def forbidden_xattr(name: str) -> bool:
    """Whether an xattr is overlay's own (whiteouts, redirects, opaque): never from a tar."""
    return name.startswith(FORBIDDEN_XATTR_PREFIXES)


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in ns, clamped to what utimensat accepts (a hostile tar can say
    anything)."""
    return min(MAX_MTIME_NS, max(0, int(member.mtime * 1_000_000_000)))


def pax_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    """The entry's xattrs from its PAX headers (`SCHILY.xattr.<name>`), as the exact bytes."""
    xattrs = {}
    for key, value in member.pax_headers.items():
        if key.startswith(PAX_XATTR_PREFIX):
            # tarfile decodes PAX values with surrogateescape: encode back to the exact bytes.
            xattrs[key[len(PAX_XATTR_PREFIX) :]] = value.encode("utf-8", "surrogateescape")
    return xattrs


def node_type(member: tarfile.TarInfo) -> int:
    """The `S_IF*` type of a fifo, char device or block device entry."""
    if member.isfifo():
        return stat.S_IFIFO
    if member.ischr():
        return stat.S_IFCHR
    return stat.S_IFBLK


@dataclass
class DirMeta:
    """A directory's metadata, applied after its children are written (deepest first)."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    xattrs: dict[str, bytes]
    opaque: bool = False

    @classmethod
    def of(cls, member: tarfile.TarInfo, opaque: bool) -> DirMeta:
        """What the directory entry `member` says; `opaque` keeps a marker already seen."""
        return cls(
            member.mode & 0o7777,
            member.uid,
            member.gid,
            mtime_ns(member),
            pax_xattrs(member),
            opaque,
        )
