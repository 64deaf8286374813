"""/proc/<pid>/mountinfo read as data: each mount's point, source root and propagation.

Pure text in, records out (proc(5) describes the format); the callers read the file. Used to
find the mounts under a directory (leak checks, tests) and the propagation of the mount a host
path lives on (a Bidirectional volume needs a shared one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    root: str  # the path inside the mounted filesystem shown at mount_point
    mount_point: str
    shared: bool  # a member of a peer group ("shared:N")
    slave: bool  # receives propagation from a master ("master:N")


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text, in its order (a later mount on the same point is on
    top). Lines that are not entries are skipped."""
    entries = []
    for line in text.splitlines():
        left, sep, _ = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 6:
            continue
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        optional = fields[6:]
        entries.append(
            MountEntry(
                mount_id=mount_id,
                parent_id=parent_id,
                root=unescape(fields[3]),
                mount_point=unescape(fields[4]),
                shared=any(f.startswith("shared:") for f in optional),
                slave=any(f.startswith("master:") for f in optional),
            )
        )
    return entries


def mount_points(text: str) -> set[str]:
    """The mount points listed in a mountinfo text (octal escapes decoded)."""
    return {entry.mount_point for entry in parse(text)}


def _contains(mount_point: str, path: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


def mount_of(entries: Sequence[MountEntry] | Iterable[MountEntry], path: str) -> MountEntry:
    """The mount `path` (absolute, symlinks already resolved) lives on: the deepest mount
    point containing it, the topmost when several are stacked there."""
    best: MountEntry | None = None
    for entry in entries:
        if not _contains(entry.mount_point, path):
            continue
        if best is None or len(entry.mount_point) >= len(best.mount_point):
            best = entry
    if best is None:
        raise ValueError(f"no mount contains {path!r}")
    return best
