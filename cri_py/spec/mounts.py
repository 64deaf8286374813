"""The spec's `mounts`, `linux.maskedPaths` and `linux.readonlyPaths`.

Order matters: the launcher performs mounts in list order, so the kernel filesystems come first,
then the pod's files, then the CRI mounts sorted by depth (a parent before what sits inside it).
A default whose destination a CRI mount also names is left out: the client's wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.runtime.container_model import Mount, Propagation

# The kernel filesystems every container gets (containerd's and runc's default spec).
KERNEL_MOUNTS: tuple[dict[str, Any], ...] = (
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
)  # fmt: skip

# Paths a container must not read: kernel memory and keys, host hardware details, timing
# side channels (/proc/timer_list, /proc/sched_debug), firmware tables, power capping (energy
# counters leak what other tenants do). Masked with /dev/null (files) or an empty tmpfs (dirs).
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)

# Paths a container may read but must not change: host-wide kernel knobs under /proc.
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_PROPAGATION = {
    Propagation.PRIVATE: "rprivate",
    Propagation.HOST_TO_CONTAINER: "rslave",
    Propagation.BIDIRECTIONAL: "rshared",
}


@dataclass(frozen=True)
class PodFiles:
    """Host paths of what the pod shares with its containers ("" = none)."""

    hosts: str = ""
    hostname: str = ""
    resolv_conf: str = ""
    shm: str = ""


def bind_mount(destination: str, source: str, readonly: bool, propagation: str) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", propagation, "ro" if readonly else "rw"],
    }


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def cri_mounts(mounts: Sequence[Mount], resolved: Mapping[str, str]) -> list[dict[str, Any]]:
    """The CRI's mounts as bind mounts. `resolved` maps each host path to the real path it
    names (symlinks followed by the caller, which also rejects missing ones)."""
    result = []
    seen: set[str] = set()
    for mount in sorted(mounts, key=lambda m: _depth(m.container_path)):
        destination = mount.container_path
        if not destination.startswith("/"):
            raise InvalidArgument(f"mount container path {destination!r} must be absolute")
        if destination in seen:
            raise InvalidArgument(f"two mounts at container path {destination!r}")
        seen.add(destination)
        source = resolved.get(mount.host_path, mount.host_path)
        result.append(
            bind_mount(destination, source, mount.readonly, _PROPAGATION[mount.propagation])
        )
    return result


def container_mounts(
    files: PodFiles,
    mounts: Sequence[Mount],
    resolved: Mapping[str, str],
    readonly_rootfs: bool,
    privileged: bool,
) -> list[dict[str, Any]]:
    requested = cri_mounts(mounts, resolved)
    taken = {m["destination"] for m in requested}
    result: list[dict[str, Any]] = []
    for default in KERNEL_MOUNTS:
        if default["destination"] in taken:
            continue
        mount = {**default, "options": list(default["options"])}
        if privileged and mount["type"] in ("sysfs", "cgroup"):
            mount["options"] = [o for o in mount["options"] if o != "ro"] + ["rw"]
        result.append(mount)
    pod = (
        ("/dev/shm", files.shm, False),
        ("/etc/hostname", files.hostname, readonly_rootfs),
        ("/etc/hosts", files.hosts, readonly_rootfs),
        ("/etc/resolv.conf", files.resolv_conf, readonly_rootfs),
    )
    for destination, source, readonly in pod:
        if source and destination not in taken:
            result.append(bind_mount(destination, source, readonly, "rprivate"))
    return result + requested


def masked_paths(privileged: bool, requested: Sequence[str] = ()) -> list[str]:
    """kubelet sends its own list (the same defaults, or none with procMount Unmasked, which
    arrives as empty and so cannot be told from "unset"): a non-empty one replaces ours."""
    if privileged:
        return []
    return list(requested) if requested else list(MASKED_PATHS)


def readonly_paths(privileged: bool, requested: Sequence[str] = ()) -> list[str]:
    if privileged:
        return []
    return list(requested) if requested else list(READONLY_PATHS)
