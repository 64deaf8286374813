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
from cri_py.model.container import Mount, Propagation
from cri_py.spec.rootfs import MAX_OPTIONS_BYTES
from cri_py.spec.userns import oci_mappings

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


def check_image_sub_path(sub_path: str, destination: str) -> None:
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise InvalidArgument(
            f"image volume at {destination}: sub path {sub_path!r} must be relative, without '..'"
        )


def image_volume_mount(
    destination: str, layers: Sequence[str], empty_dir: str, sub_path: str = ""
) -> dict[str, Any]:
    """An image volume: a read-only overlay of the image's layers (lowest first here), with no
    upper dir. Overlay wants two lower dirs then, so a one-layer (or empty) image gets
    `empty_dir` below it. A sub path (not an OCI field: `imageSubPath`, read by the launcher)
    is bound from the overlay mounted aside."""
    lower = [*reversed(layers), empty_dir] if len(layers) < 2 else list(reversed(layers))
    mount: dict[str, Any] = {
        "destination": destination,
        "type": "overlay",
        "source": "overlay",
        "options": ["ro", "nodev", "nosuid", "rprivate", f"lowerdir={':'.join(lower)}"],
    }
    if len(",".join(mount["options"])) > MAX_OPTIONS_BYTES:
        raise InvalidArgument(
            f"image volume at {destination}: {len(layers)} layers are too many for one mount"
        )
    if sub_path.strip("/"):
        mount["imageSubPath"] = sub_path.strip("/")
    return mount


def check_recursive_read_only(mount: Mount) -> None:
    """The CRI's rule: recursive_read_only needs readonly and PRIVATE propagation."""
    if not mount.readonly:
        raise InvalidArgument(
            f"mount {mount.container_path}: recursive_read_only needs readonly set too"
        )
    if mount.propagation != Propagation.PRIVATE:
        raise InvalidArgument(
            f"mount {mount.container_path}: recursive_read_only needs PRIVATE propagation "
            f"(got {mount.propagation.name})"
        )


def cri_mounts(
    mounts: Sequence[Mount],
    resolved: Mapping[str, str],
    image_volumes: Mapping[str, Sequence[str]] | None = None,
    empty_dir: str = "",
) -> list[dict[str, Any]]:
    """The CRI's mounts as bind mounts, or overlays for image volumes. `resolved` maps each
    host path to the real path it names (symlinks followed by the caller, which also rejects
    missing ones); `image_volumes` maps an image volume's container path to its image's
    unpacked layer dirs, lowest first."""
    result = []
    seen: set[str] = set()
    for mount in sorted(mounts, key=lambda m: _depth(m.container_path)):
        destination = mount.container_path
        if not destination.startswith("/"):
            raise InvalidArgument(f"mount container path {destination!r} must be absolute")
        if destination in seen:
            raise InvalidArgument(f"two mounts at container path {destination!r}")
        seen.add(destination)
        if mount.recursive_read_only:
            check_recursive_read_only(mount)
        if mount.image:
            # KEP 4639: image volumes are read-only by definition; a writable one is refused.
            if not mount.readonly:
                raise InvalidArgument(
                    f"image volume {mount.image} at {destination} must be read-only"
                )
            check_image_sub_path(mount.image_sub_path, destination)
            layers = (image_volumes or {}).get(destination)
            if layers is None:
                raise InvalidArgument(f"image volume at {destination}: image not resolved")
            result.append(image_volume_mount(destination, layers, empty_dir, mount.image_sub_path))
            continue
        source = resolved.get(mount.host_path, mount.host_path)
        bind = bind_mount(destination, source, mount.readonly, _PROPAGATION[mount.propagation])
        if mount.recursive_read_only:
            # OCI runtime-spec 1.1's "rro": mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY).
            bind["options"].append("rro")
        if mount.uid_mappings or mount.gid_mappings:
            # An idmapped mount (runtime-spec 1.1): host owners appear shifted by the mapping.
            bind["uidMappings"] = oci_mappings(mount.uid_mappings)
            bind["gidMappings"] = oci_mappings(mount.gid_mappings)
        result.append(bind)
    return result


def container_mounts(
    files: PodFiles,
    mounts: Sequence[Mount],
    resolved: Mapping[str, str],
    readonly_rootfs: bool,
    privileged: bool,
    image_volumes: Mapping[str, Sequence[str]] | None = None,
    empty_dir: str = "",
) -> list[dict[str, Any]]:
    requested = cri_mounts(mounts, resolved, image_volumes, empty_dir)
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
