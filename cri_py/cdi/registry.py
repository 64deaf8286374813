"""The node's CDI specs, read from the configured dirs, and the one call CreateContainer makes:
`CdiRegistry.inject`, the spec changes of the devices a container asks for.

Files: `*.json` and `*.yaml` directly in each dir (not in subdirs), read in name order. A
device defined in a later dir overrides one in an earlier dir; two files of the same dir
defining one device make it unusable (the CDI rule), and asking for it fails naming both.
A malformed file is logged and skipped; its devices are unknown, and asking for one names the
file and its error.

Re-reading: the specs are re-read when a container asks for a CDI device and the dirs'
listing (name, size, mtime, inode of each file) differs from the last read: a few stat calls
per such CreateContainer, nothing for others, and no watcher thread.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cri_py.cdi.edits import (
    HostNode,
    Injection,
    bind_sources,
    check_supported,
    host_paths_to_read,
    ordered_edits,
    plan_injection,
)
from cri_py.cdi.names import QualifiedName, requested_devices
from cri_py.cdi.spec import (
    MAX_SPEC_BYTES,
    CdiSpec,
    CdiSpecError,
    ContainerEdits,
    load_document,
    parse_spec,
)
from cri_py.errors import FailedPrecondition
from cri_py.log import get_logger
from cri_py.model.container import ContainerConfig

log = get_logger("cri_py.cdi")

SPEC_SUFFIXES = (".json", ".yaml")
# How many broken files an "unknown device" error names.
MAX_NAMED_BROKEN = 3

# (path, size, mtime_ns, inode) of each spec file, in reading order.
Listing = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class Catalog:
    """The specs of one read of the dirs."""

    listing: Listing = ()
    # "vendor/class=name" -> the spec that defines it.
    devices: Mapping[str, CdiSpec] = field(default_factory=dict)
    # "vendor/class=name" -> the files of one dir that both define it.
    conflicts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # (path, why) of each file that could not be used.
    broken: tuple[tuple[str, str], ...] = ()


def list_spec_files(spec_dirs: Sequence[str]) -> Listing:
    entries = []
    for directory in spec_dirs:
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            log.warning("CDI spec dir unreadable", dir=directory, error=e.strerror)
            continue
        for name in names:
            if not name.endswith(SPEC_SUFFIXES):
                continue
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                entries.append((path, info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(entries)


def read_spec(path: str) -> CdiSpec:
    # O_NONBLOCK: a FIFO named *.yaml must not hang a create; only regular files are read.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CdiSpecError("not a regular file")
        data = f.read(MAX_SPEC_BYTES + 1)
    return parse_spec(load_document(data, path), path)


def build_catalog(spec_dirs: Sequence[str], listing: Listing) -> Catalog:
    devices: dict[str, CdiSpec] = {}
    conflicts: dict[str, tuple[str, ...]] = {}
    broken: list[tuple[str, str]] = []
    for directory in spec_dirs:
        in_dir: dict[str, list[CdiSpec]] = {}
        for path, *_ in listing:
            if os.path.dirname(path) != os.path.normpath(directory):
                continue
            try:
                spec = read_spec(path)
            except CdiSpecError as e:
                broken.append((path, str(e)))
                continue
            except OSError as e:
                broken.append((path, e.strerror or str(e)))
                continue
            for name in spec.devices:
                in_dir.setdefault(f"{spec.kind}={name}", []).append(spec)
        for qualified, specs in in_dir.items():
            # A later dir's definition replaces an earlier dir's (and its conflict).
            devices.pop(qualified, None)
            conflicts.pop(qualified, None)
            if len(specs) > 1:
                conflicts[qualified] = tuple(s.path for s in specs)
            else:
                devices[qualified] = specs[0]
    for path, why in broken:
        log.warning("CDI spec file skipped", file=path, error=why)
    return Catalog(listing, devices, conflicts, tuple(broken))


def host_node(path: str) -> HostNode:
    """The node at a host path (symlinks followed, as the reference implementation stats)."""
    info = os.stat(path)
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    elif stat.S_ISFIFO(info.st_mode):
        return HostNode("p", 0, 0)
    else:
        raise ValueError("not a device node")
    return HostNode(kind, os.major(info.st_rdev), os.minor(info.st_rdev))


class CdiRegistry:
    def __init__(self, spec_dirs: Sequence[str]) -> None:
        self._dirs = tuple(os.path.normpath(d) for d in spec_dirs)
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None

    @property
    def spec_dirs(self) -> tuple[str, ...]:
        return self._dirs

    def catalog(self) -> Catalog:
        """The current specs, re-read if the dirs' files changed since the last read."""
        with self._lock:
            listing = list_spec_files(self._dirs)
            if self._catalog is None or listing != self._catalog.listing:
                self._catalog = build_catalog(self._dirs, listing)
                log.info(
                    "CDI specs read",
                    dirs=",".join(self._dirs),
                    files=len(listing),
                    devices=len(self._catalog.devices),
                    broken=len(self._catalog.broken),
                )
            return self._catalog

    def _spec_of(self, catalog: Catalog, name: QualifiedName) -> CdiSpec:
        qualified = str(name)
        spec = catalog.devices.get(qualified)
        if spec is not None:
            return spec
        if qualified in catalog.conflicts:
            files = " and ".join(catalog.conflicts[qualified])
            raise FailedPrecondition(
                f"CDI device {qualified} is defined twice in one spec dir ({files}); "
                "remove one of them"
            )
        message = f"CDI device {qualified} is not defined by any spec in {', '.join(self._dirs)}"
        if catalog.broken:
            named = "; ".join(f"{p}: {why}" for p, why in catalog.broken[:MAX_NAMED_BROKEN])
            more = len(catalog.broken) - MAX_NAMED_BROKEN
            message += f" (spec files skipped as invalid: {named}"
            message += f"; and {more} more)" if more > 0 else ")"
        raise FailedPrecondition(message)

    def inject(self, config: ContainerConfig) -> Injection:
        """What the container's CDI devices (`CDI_devices` and the `cdi.k8s.io/` annotations)
        change in its spec; nothing for a container that asks for none."""
        names = requested_devices(config.cdi_devices, config.annotations)
        if not names:
            return Injection()
        catalog = self.catalog()
        sources = ordered_edits([(name, self._spec_of(catalog, name)) for name in names])
        check_supported(sources)
        host: dict[str, HostNode] = {}
        for path in host_paths_to_read(sources):
            try:
                host[path] = host_node(path)
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) else str(e)
                owner = next(s for s in sources if _names_host_path(s.edits, path))
                raise FailedPrecondition(
                    f"CDI device {owner.label} ({owner.path}): host device {path}: {why}"
                ) from None
        real: dict[str, str] = {}
        for path in bind_sources(sources):
            resolved = os.path.realpath(path)
            if not os.path.isabs(path) or not os.path.exists(resolved):
                owner = next(s for s in sources if any(m.host_path == path for m in s.edits.mounts))
                raise FailedPrecondition(
                    f"CDI device {owner.label} ({owner.path}): mount source {path} does not exist"
                )
            real[path] = resolved
        return plan_injection(
            sources,
            host,
            real,
            cri_device_paths=[d.container_path for d in config.devices],
            cri_mount_paths=[m.container_path for m in config.mounts],
        )


def _names_host_path(edits: ContainerEdits, path: str) -> bool:
    return any((n.host_path or n.path) == path for n in edits.device_nodes)
