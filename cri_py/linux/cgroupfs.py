"""The cgroupfs edge: find the hierarchies, create, write, join and remove cgroups.

Cgroup paths are absolute from each hierarchy's root (`/kubepods/burstable/pod<uid>/...`),
never relative to the daemon's own cgroup: the daemon may sit in a cgroup that belongs to the
machine. Which files get which values is decided in `cri_py.oci.cgroups`; this module only
finds where a path lives on each mount and does the I/O.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cri_py.errors import InvalidArgument
from cri_py.linux.mountinfo import unescape
from cri_py.oci.cgroups import Write

MOUNTINFO = Path("/proc/self/mountinfo")
# Super options of a v1 cgroup mount that are not controllers.
_NOT_CONTROLLERS = frozenset({"rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode"})


class CgroupMode(enum.Enum):
    V1 = "v1"  # controllers on v1 hierarchies, no cgroup2 mount
    HYBRID = "hybrid"  # controllers on v1, an (empty) cgroup2 mount beside them
    V2 = "v2"  # the unified hierarchy holds the controllers


@dataclass(frozen=True)
class Hierarchy:
    mountpoint: str
    root: str  # the hierarchy path this mount shows at its mountpoint (usually "/")
    controllers: frozenset[str]  # v1: cpu, memory, name=systemd...; v2: empty here
    version: int


def parse_mountinfo(text: str) -> list[Hierarchy]:
    """The cgroup mounts listed in a /proc/<pid>/mountinfo text (first mount of each wins)."""
    found: dict[tuple[int, frozenset[str]], Hierarchy] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        controllers: frozenset[str] = frozenset()
        if version == 1:
            controllers = frozenset(
                o
                for o in tail[2].split(",")
                if o.startswith("name=") or ("=" not in o and o not in _NOT_CONTROLLERS)
            )
        key = (version, controllers)
        found.setdefault(
            key, Hierarchy(unescape(fields[4]), unescape(fields[3]), controllers, version)
        )
    return list(found.values())


def detect_mode(hierarchies: Iterable[Hierarchy]) -> CgroupMode:
    v1 = any(h.version == 1 and h.controllers - {"name=systemd"} for h in hierarchies)
    v2 = any(h.version == 2 for h in hierarchies)
    if v1:
        return CgroupMode.HYBRID if v2 else CgroupMode.V1
    if v2:
        return CgroupMode.V2
    raise OSError(errno.ENOENT, "no cgroup hierarchy is mounted")


def clean_cgroup_path(path: str) -> str:
    """An absolute, normalised cgroup path; anything that could climb out is refused."""
    if not path.startswith("/"):
        raise InvalidArgument(f"cgroup path {path!r} must be absolute (e.g. /kubepods/pod1)")
    parts = path.split("/")
    if any(p in (".", "..") for p in parts) or "\x00" in path:
        raise InvalidArgument(f"cgroup path {path!r} must not contain . or .. components")
    return posixpath.normpath(path)


class Cgroupfs:
    """Cgroup I/O over the hierarchies mounted on this host (or a fake tree in tests)."""

    def __init__(self, hierarchies: list[Hierarchy]) -> None:
        self.mode = detect_mode(hierarchies)
        if self.mode == CgroupMode.V2:
            self.hierarchies = [h for h in hierarchies if h.version == 2]
        else:
            self.hierarchies = [h for h in hierarchies if h.version == 1]
        self._by_controller = {c: h for h in self.hierarchies for c in h.controllers}

    @classmethod
    def from_host(cls) -> Cgroupfs:
        return cls(parse_mountinfo(MOUNTINFO.read_text()))

    def controllers(self) -> set[str]:
        return set(self._by_controller)

    def _dir(self, hierarchy: Hierarchy, cgroup: str) -> Path:
        cgroup = clean_cgroup_path(cgroup)
        relative = posixpath.relpath(cgroup, hierarchy.root)
        if relative.startswith(".."):
            raise InvalidArgument(
                f"cgroup {cgroup} is outside what {hierarchy.mountpoint} shows ({hierarchy.root})"
            )
        return Path(hierarchy.mountpoint) / relative

    def dirs(self, cgroup: str) -> list[Path]:
        """The directory of `cgroup` in every hierarchy we manage."""
        return [self._dir(h, cgroup) for h in self.hierarchies]

    def file(self, cgroup: str, controller: str, name: str) -> Path:
        if self.mode == CgroupMode.V2:
            return self._dir(self.hierarchies[0], cgroup) / name
        hierarchy = self._by_controller.get(controller)
        if hierarchy is None:
            raise OSError(errno.ENOENT, f"cgroup controller {controller} is not mounted")
        return self._dir(hierarchy, cgroup) / name

    def create(self, cgroup: str) -> None:
        """Makes the cgroup (and missing parents) in every hierarchy. The usual case (the
        parents exist) costs one mkdir a hierarchy, and on cpuset four small reads and writes:
        this runs in every CreateContainer, where path walks and checks of every ancestor
        took ~3 ms across nine hierarchies."""
        for hierarchy in self.hierarchies:
            target = self._dir(hierarchy, cgroup)
            top = Path(hierarchy.mountpoint)
            if target == top:
                continue
            _make_dir(target, top)
            if "cpuset" in hierarchy.controllers:
                _inherit_cpuset(target, top)

    def enable_v2_controllers(self, cgroup: str, controllers: Iterable[str]) -> None:
        """cgroup v2: turns controllers on in every ancestor's subtree_control, top down."""
        wanted = set(controllers)
        if self.mode != CgroupMode.V2 or not wanted:
            return
        hierarchy = self.hierarchies[0]
        target = self._dir(hierarchy, cgroup)
        top = Path(hierarchy.mountpoint)
        chain = [p for p in reversed(target.parents) if p == top or top in p.parents]
        for directory in chain:
            control = directory / "cgroup.subtree_control"
            missing = wanted - set(control.read_text().split())
            if missing:  # one write: the kernel takes a space-separated list
                control.write_text(" ".join(f"+{name}" for name in sorted(missing)))

    def read(self, cgroup: str, controller: str, name: str) -> str:
        return self.file(cgroup, controller, name).read_text().strip()

    def write(self, cgroup: str, writes: Iterable[Write]) -> None:
        for w in writes:
            path = self.file(cgroup, w.controller, w.file)
            try:
                _write(path, w.value)
            except OSError as e:
                raise OSError(e.errno, f"writing {w.value!r} to {path}: {e.strerror}") from None

    def add_process(self, cgroup: str, pid: int) -> None:
        for directory in self.dirs(cgroup):
            _write(directory / "cgroup.procs", str(pid))

    def pids(self, cgroup: str) -> list[int]:
        directory = self.dirs(cgroup)[0]
        try:
            return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []
        except OSError as e:
            if e.errno == errno.ENODEV:  # being removed (systemd ends an empty scope): none
                return []
            raise

    def exists(self, cgroup: str) -> bool:
        return any(d.is_dir() for d in self.dirs(cgroup))

    def remove(self, cgroup: str, timeout: float = 5.0) -> None:
        """Removes the cgroup from every hierarchy; retries while exiting tasks drain (EBUSY)."""
        deadline = time.monotonic() + timeout
        for directory in self.dirs(cgroup):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno == errno.ENODEV:  # someone else is removing it (systemd)
                        break
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise OSError(
                            e.errno, f"removing cgroup {directory}: {e.strerror}"
                        ) from None
                    time.sleep(0.01)


def _write(path: Path, value: str) -> None:
    """`path.write_text(value)` as three system calls: a container's create writes ~20 of
    these (cpuset, limits, device rules), where Python's text I/O layers cost ~4 more each."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _make_dir(directory: Path, top: Path) -> None:
    """mkdir of `directory` and of its missing parents below `top` (never `top` itself)."""
    try:
        os.mkdir(directory, 0o755)
    except FileNotFoundError:
        if directory.parent == top:
            raise
        _make_dir(directory.parent, top)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755)
    except FileExistsError:
        pass  # a concurrent create made it first (two pods under a new parent)


def _inherit_cpuset(directory: Path, top: Path) -> None:
    """cgroup v1 cpuset: a new cgroup starts with empty cpus/mems and refuses tasks; copy the
    parent's, as the kernel does with cgroup.clone_children. A parent still empty (a concurrent
    create just made it and has not copied yet) gets its own first, up to `top`."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = directory / name
        try:
            if own.read_text().strip():
                continue
        except FileNotFoundError:
            return
        parent = directory.parent
        value = (parent / name).read_text().strip()
        if not value and parent != top:
            _inherit_cpuset(parent, top)
            value = (parent / name).read_text().strip()
        _write(own, value)
